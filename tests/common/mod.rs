//! Shared helpers for the integration tests. They run against the real local
//! stack started by `make stack` (Postgres+pgvector, postrust, moto and the
//! project's embeddings server), whose settings are in `.stack/env`.
#![allow(dead_code)]

pub mod emf;

use aws_sdk_sqs::types::QueueAttributeName;
use embed_backfill::config::Env;
use embed_backfill::dispatch::Dispatcher;
use embed_backfill::ids::RunId;
use embed_backfill::queue::SqsQueue;
use embed_backfill::setup;
use embed_backfill::store::{RunStatus, Select, Selection, Store, VectorSpec};
use embed_backfill::worker::Worker;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stack's settings, with per-test overrides on top.
#[derive(Clone, Debug)]
pub struct Stack {
    pub vars: HashMap<String, String>,
}

impl Stack {
    pub fn load() -> Self {
        // STACK_ENV points the tests at another stack's settings file.
        let path = std::env::var_os("STACK_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".stack/env"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}. Start the local stack with `make stack` (make test does it)",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().trim_start_matches("export ").to_string(),
                    v.trim().to_string(),
                )
            })
            .collect();
        Self { vars }
    }

    pub fn var(&self, name: &str) -> String {
        self.vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from .stack/env"))
    }

    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut s = self.clone();
        s.vars.insert(name.to_string(), value.to_string());
        s
    }

    /// The settings without `name`: e.g. without SUPABASE_SECRET_KEY, which
    /// wins over SUPABASE_SERVICE_ROLE_KEY, to exercise the legacy key.
    pub fn without(&self, name: &str) -> Self {
        let mut s = self.clone();
        s.vars.remove(name);
        s
    }

    pub fn env(&self) -> Env<impl Fn(&str) -> Option<String> + '_> {
        Env::new(move |name: &str| self.vars.get(name).cloned())
    }

    pub fn store(&self) -> Arc<dyn Store> {
        setup::store(&self.env()).expect("a store from the stack's settings")
    }

    /// The vectors the stack's settings make, as `verify` checks them.
    pub fn spec(&self) -> VectorSpec {
        setup::spec(&self.env()).expect("a spec from the stack's settings")
    }

    /// What a run of the missing rows selects.
    pub fn missing(&self) -> Selection {
        Selection {
            select: Select::Missing,
            spec: self.spec(),
        }
    }

    pub fn dispatcher(&self, queue: &SqsQueue) -> Dispatcher<SqsQueue> {
        setup::dispatcher(&self.env(), &self.store(), queue.clone()).expect("dispatcher")
    }

    pub fn worker(&self) -> Worker {
        setup::worker(&self.env(), &self.store()).expect("worker")
    }

    /// Messages in a queue, visible or in flight.
    pub async fn queue_depth(&self, url: &str) -> u64 {
        let (visible, in_flight) = SqsQueue::new(self.sqs_client().await, url)
            .depth()
            .await
            .expect("queue attributes");
        visible + in_flight
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.var("DATABASE_URL"), tokio_postgres::NoTls)
                .await
                .expect("connect to the stack's Postgres");
        tokio::spawn(conn);
        client
    }

    /// Dispatches `archive` in batches of `batch_size` into a fresh queue; the
    /// queue and the run.
    pub async fn dispatch_fresh(&self, archive: &str, batch_size: u32) -> (SqsQueue, RunId) {
        let (queue, _) = self.fresh_queue(30, 5).await;
        let opts = embed_backfill::dispatch::DispatchRequest {
            archive: Some(archive.to_string()),
            batch_size: Some(batch_size),
            ..Default::default()
        }
        .validate()
        .expect("valid dispatch options");
        let summary = self
            .dispatcher(&queue)
            .dispatch(&opts)
            .await
            .expect("dispatch");
        (queue, summary.run_id.expect("a real dispatch has a run"))
    }

    /// A table of the documents' shape for one test alone, readable and
    /// writable by the API's `service_role`.
    pub async fn fresh_table(&self, prefix: &str) -> String {
        let table = unique(prefix).replace('-', "_");
        self.pg()
            .await
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, archive text, content text, embedding vector(1536));
                 GRANT SELECT, UPDATE ON {table} TO service_role;"
            ))
            .await
            .expect("create the test's table");
        table
    }

    /// A fresh queue and dead-letter queue on the stack's SQS, so tests do not
    /// drain each other's messages.
    pub async fn fresh_queue(
        &self,
        visibility_secs: u32,
        max_receive_count: u32,
    ) -> (SqsQueue, String) {
        let sqs = self.sqs_client().await;
        let name = unique("q");
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("create DLQ");
        let dlq_url = dlq.queue_url.expect("DLQ url");
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("DLQ arn")
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("DLQ arn attribute");
        let q = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .attributes(
                QueueAttributeName::RedrivePolicy,
                format!(
                    r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receive_count}"}}"#
                ),
            )
            .send()
            .await
            .expect("create queue");
        (SqsQueue::new(sqs, q.queue_url.expect("queue url")), dlq_url)
    }

    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.aws())
    }

    /// The stack's Secrets Manager (moto).
    pub fn secrets_client(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.aws())
    }

    /// The AWS SDK's settings for the stack's moto.
    fn aws(&self) -> aws_config::SdkConfig {
        let creds = aws_sdk_sqs::config::Credentials::new(
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "stack",
        );
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.var("AWS_REGION")))
            .endpoint_url(self.var("AWS_ENDPOINT_URL"))
            .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(creds))
            .build()
    }

    /// The vectors the stack's embeddings server gives `texts`, 100 a request.
    pub async fn expected_vectors(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let base = self.var("OPENAI_BASE_URL");
        let http = reqwest::Client::new();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(100) {
            let resp: serde_json::Value = http
                .post(format!("{base}/embeddings"))
                .bearer_auth(self.var("OPENAI_API_KEY"))
                .json(&serde_json::json!({"model": "text-embedding-3-small", "input": chunk}))
                .send()
                .await
                .expect("embeddings server")
                .json()
                .await
                .expect("embeddings json");
            for item in resp["data"].as_array().expect("data") {
                out.push(
                    item["embedding"]
                        .as_array()
                        .expect("float vector")
                        .iter()
                        .map(|v| v.as_f64().expect("number") as f32)
                        .collect(),
                );
            }
        }
        out
    }

    /// The vector the stack's embeddings server gives `text` as the worker
    /// sends it: cut to the model's input limit.
    pub async fn expected_vector(&self, text: &str) -> Vec<f32> {
        let cut = embed_backfill::tokens::truncate(text, embed_backfill::tokens::MAX_INPUT_TOKENS);
        let text = cut.text.as_ref();
        let base = self.var("OPENAI_BASE_URL");
        let resp: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/embeddings"))
            .bearer_auth(self.var("OPENAI_API_KEY"))
            .json(&serde_json::json!({"model": "text-embedding-3-small", "input": [text], "dimensions": 1536}))
            .send()
            .await
            .expect("embeddings server")
            .json()
            .await
            .expect("embeddings json");
        resp["data"][0]["embedding"]
            .as_array()
            .expect("float vector")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect()
    }
}

/// Runs the `backfill` binary with the stack's settings and nothing else of
/// this process's environment.
pub fn backfill(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(&stack.vars)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run backfill")
}

/// The JSON a successful `backfill ... --json` printed.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "backfill failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The hex sha256 of a text as stored, as the store records it.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The run's status row, which the test expects to exist.
pub async fn run_of(store: &Arc<dyn Store>, id: impl Into<Option<RunId>>) -> RunStatus {
    store
        .run_status(id.into())
        .await
        .expect("run status")
        .expect("the run exists")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test or earlier run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    )
}

/// Inserts documents into `lovdata_documents` (or `table`) and returns their ids in order.
pub async fn insert_docs(
    pg: &tokio_postgres::Client,
    table: &str,
    archive: &str,
    contents: &[Option<&str>],
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(contents.len());
    let stmt = pg
        .prepare(&format!(
            "INSERT INTO {table} (title, archive, content) VALUES ($1, $2, $3) RETURNING id"
        ))
        .await
        .expect("prepare insert");
    for (i, c) in contents.iter().enumerate() {
        let row = pg
            .query_one(&stmt, &[&format!("Dokument {i}"), &archive, c])
            .await
            .expect("insert document");
        ids.push(row.get::<_, i64>(0));
    }
    ids
}

/// Stored vectors by id (absent when NULL).
pub async fn vectors(
    pg: &tokio_postgres::Client,
    table: &str,
    ids: &[i64],
) -> HashMap<i64, Vec<f32>> {
    pg.query(
        &format!(
            "SELECT id, embedding::text FROM {table} WHERE id = ANY($1) AND embedding IS NOT NULL"
        ),
        &[&ids],
    )
    .await
    .expect("read vectors")
    .into_iter()
    .map(|r| {
        let text: String = r.get(1);
        let v = text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.parse::<f32>().expect("vector component"))
            .collect();
        (r.get(0), v)
    })
    .collect()
}

/// Realistic texts of varied lengths, with the edge cases the worker must
/// handle. Each call's texts are its own: a text any other row holds would
/// take that row's vector instead of costing an API call.
pub fn sample_texts(n: usize) -> Vec<Option<String>> {
    let salt = unique("t");
    let words = [
        "loven",
        "gjelder",
        "kommunen",
        "departementet",
        "vedtak",
        "klage",
        "forskrift",
        "paragraf",
        "første",
        "ledd",
        "søknad",
        "tillatelse",
        "myndighet",
        "fylkeskommunen",
        "særlige",
        "regler",
        "plikt",
        "rett",
        "ærlig",
        "økonomi",
    ];
    (0..n)
        .map(|i| match i % 10 {
            0 => Some(String::new()),
            1 => Some("  \n\t ".into()),
            2 if i % 20 == 2 => Some(
                std::iter::once(salt.as_str())
                    .chain((0..12_000).map(|j| words[(i * 7 + j * 3) % words.len()]))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            3 if i % 30 == 3 => None,
            _ => Some(format!(
                "§ {i} {salt} {}",
                (0..(20 + i * 13 % 400))
                    .map(|j| words[(i + j * j) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        })
        .collect()
}

/// A private embeddings server, for tests that count its requests or need
/// another key or fault settings than the shared one.
pub struct Standin {
    child: Child,
    pub url: String,
    pub key: String,
}

impl Standin {
    pub fn spawn(extra_args: &[&str]) -> Self {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        let bin = target.join("debug/openai-standin");
        let port = free_port();
        let key = format!("sk-test-{}", unique("k"));
        let mut child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--api-key", &key])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (build it with `cargo build -p devstack`)",
                    bin.display()
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, url, key };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("openai-standin did not start on port {port}");
    }

    pub async fn stats(&self) -> serde_json::Value {
        standin_stats(&self.url).await
    }
}

/// The counters of the embeddings server at `url`.
pub async fn standin_stats(url: &str) -> serde_json::Value {
    reqwest::get(format!("{url}/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Where the debug builds of the devstack binaries are (`make stack` builds them).
fn devstack_bin(name: &str) -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
        .join("debug")
        .join(name)
}

/// A private Supabase-shaped gateway (devstack's `supabase-gateway`) in front
/// of `upstream`, with the stack's keys and its own row cap and counters.
pub struct Gateway {
    child: Child,
    port: u16,
    pub upstream: String,
    pub max_rows: usize,
}

impl Gateway {
    pub fn spawn(stack: &Stack, upstream: &str, max_rows: usize) -> Self {
        let bin = devstack_bin("supabase-gateway");
        let port = free_port();
        // The keys go in the environment, as scripts/stack.sh passes them.
        let mut child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", upstream])
            .args(["--max-rows", &max_rows.to_string()])
            .env("SUPABASE_JWT_SECRET", stack.var("SUPABASE_JWT_SECRET"))
            .env("SUPABASE_SECRET_KEY", stack.var("SUPABASE_SECRET_KEY"))
            .env(
                "SUPABASE_PUBLISHABLE_KEY",
                stack.var("SUPABASE_PUBLISHABLE_KEY"),
            )
            .env("GATEWAY_DATABASE_URL", stack.var("DATABASE_URL"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (build it with `cargo build -p devstack`)",
                    bin.display()
                )
            });
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self {
                    child,
                    port,
                    upstream: upstream.to_string(),
                    max_rows,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("supabase-gateway did not start on port {port}");
    }

    /// The project URL (SUPABASE_URL); PostgREST is under `/rest/v1`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `{"requests": {"/rpc/NAME": n, ...}, "statuses": {"200": n}, "cut": n, ...}`
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_stack/stats", self.url()))
            .await
            .expect("gateway stats")
            .json()
            .await
            .expect("gateway stats json")
    }

    /// Calls of one path (`/rpc/NAME`, `/TABLE`) since the start or the last reset.
    pub async fn calls(&self, path: &str) -> u64 {
        self.stats().await["requests"][path].as_u64().unwrap_or(0)
    }

    pub async fn reset_stats(&self) {
        reqwest::Client::new()
            .post(format!("{}/_stack/stats/reset", self.url()))
            .send()
            .await
            .expect("reset gateway stats")
            .error_for_status()
            .expect("reset gateway stats");
    }
    /// Turns faults on or off: `{"latency_ms": 500}`, `{"refuse_keys": true}`.
    pub async fn faults(&self, faults: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("{}/_stack/faults", self.url()))
            .json(&faults)
            .send()
            .await
            .expect("gateway faults")
            .error_for_status()
            .expect("gateway faults");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// postrust's PGRST_ROLE_SETTINGS (the roles' statement timeouts) from the
/// stack's database, as scripts/stack.sh builds it. Blocking, so the spawn
/// helpers can stay plain functions inside async tests.
pub fn postrust_role_settings(stack: &Stack) -> String {
    let url = stack.var("DATABASE_URL");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(devstack::gateway::postrust_role_settings(&url))
            .expect("read the roles' settings")
    })
    .join()
    .expect("role settings thread")
}

/// A private PostgREST-compatible server over the stack's database behind a
/// private gateway, for tests that restart it without disturbing the others.
/// `url()` is the gateway's (a SUPABASE_URL); `stop()` and `start()` stop and
/// start postrust only, so the gateway answers 502 meanwhile, as Supabase's does.
pub struct PrivateRest {
    child: Option<Child>,
    port: u16,
    db_url: String,
    jwt_secret: String,
    role_settings: String,
    pub gateway: Gateway,
}

impl PrivateRest {
    pub fn spawn(stack: &Stack) -> Self {
        Self::spawn_with_db(stack, &stack.var("STACK_POSTGREST_DB_URL"))
    }

    /// Connects to the database as another role, so a test can cut this
    /// server's database sessions without touching anyone else's.
    pub fn spawn_with_db(stack: &Stack, db_url: &str) -> Self {
        let port = free_port();
        let upstream = format!("http://127.0.0.1:{port}");
        let max_rows = stack
            .vars
            .get("STACK_MAX_ROWS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let mut r = Self {
            child: None,
            port,
            db_url: db_url.to_string(),
            jwt_secret: stack.var("SUPABASE_JWT_SECRET"),
            role_settings: postrust_role_settings(stack),
            gateway: Gateway::spawn(stack, &upstream, max_rows),
        };
        r.start();
        r
    }

    /// The gateway in front of this server: use it as SUPABASE_URL.
    pub fn url(&self) -> String {
        self.gateway.url()
    }

    /// postrust itself, without the gateway.
    pub fn upstream_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The gateway's counts of the requests it passed to this server.
    pub async fn stats(&self) -> serde_json::Value {
        self.gateway.stats().await
    }

    pub async fn reset_stats(&self) {
        self.gateway.reset_stats().await
    }

    pub fn start(&mut self) {
        let bin = repo_root().join(".tools/bin/postrust");
        let child = Command::new(&bin)
            .env("DATABASE_URL", &self.db_url)
            .env("PGRST_DB_ANON_ROLE", "anon")
            .env("PGRST_JWT_SECRET", &self.jwt_secret)
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", self.port.to_string())
            .env("PGRST_DB_SCHEMAS", "public")
            .env("PGRST_COMPAT_MODE", "true")
            .env("PGRST_ROLE_SETTINGS", &self.role_settings)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (make stack installs it)", bin.display()));
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private postrust did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every one of `batches` messages was handled successfully. SQS (and moto)
/// deliver at least once: a duplicate that arrives while its batch is leased
/// fails and comes back later, one that arrives after it ended succeeds
/// without work, so the tally may hold more than `batches` messages; the run's
/// counters, which the tests check too, must not.
pub fn assert_all_handled(tally: &embed_backfill::runner::Tally, batches: u64) {
    assert!(
        tally.succeeded >= batches && tally.failed <= tally.messages - batches,
        "expected {batches} batches handled, got {tally:?}"
    );
}

/// How the tests drain a queue: as `backfill work --until-empty` does, each
/// receive bounded by `message_timeout` as a Lambda's timeout would bound it.
pub fn drain_opts(message_timeout: Duration) -> embed_backfill::runner::ConsumeOptions {
    embed_backfill::runner::ConsumeOptions {
        until_empty: true,
        concurrency: 2,
        batch_size: 10,
        wait: Duration::from_secs(1),
        message_timeout,
        on_failure: embed_backfill::runner::OnFailure::Leave,
    }
}

/// Drains `queue` with the stack's worker.
pub async fn drain(stack: &Stack, queue: &SqsQueue) -> embed_backfill::runner::Tally {
    embed_backfill::runner::consume(&stack.worker(), queue, &drain_opts(Duration::from_secs(60)))
        .await
        .expect("drain")
}

/// A dispatcher event's options, which the test means to be valid.
pub fn options(json: &str) -> embed_backfill::dispatch::DispatchOptions {
    embed_backfill::dispatch::DispatchRequest::from_json(json)
        .expect("event")
        .validate()
        .expect("options")
}

/// Inserts non-empty texts into `lovdata_documents`; their ids in order.
pub async fn insert_texts(
    pg: &tokio_postgres::Client,
    archive: &str,
    texts: &[String],
) -> Vec<i64> {
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    insert_docs(pg, "lovdata_documents", archive, &refs).await
}

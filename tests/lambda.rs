//! The `dispatcher`, `worker` and `poller` binaries as Lambda functions, under
//! `cargo lambda watch` (the Lambda runtime API emulator): every sample event in
//! `events/` goes through the Invoke API, queued batches reach the worker as
//! SQS events the way an event source mapping delivers them, batch mode's jobs
//! go through the poller as its schedule invokes it, and the keys come from
//! Secrets Manager at cold start, not from the environment.

mod common;

use common::{emf, insert_docs, repo_root, run_of, sample_texts, unique, vectors, Stack, Standin};
use embed_backfill::ids::RunId;
use embed_backfill::store::RunState;
use embed_backfill::{handlers, invoke};
use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ARCHIVE: &str = "gjeldende-lover.tar.bz2";
/// Keys that must reach the functions only through Secrets Manager.
const KEYS: [&str; 3] = [
    "OPENAI_API_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SECRET_KEY",
];

/// `cargo lambda watch` serving this package's binaries on a loopback port.
struct Emulator {
    child: Child,
    port: u16,
    /// Holds `watch.log`: the functions' standard output, logs and metrics.
    dir: std::path::PathBuf,
}

impl Emulator {
    fn start(vars: &HashMap<String, String>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("lambda-emulator"));
        std::fs::create_dir_all(&dir).unwrap();
        let env_file = dir.join("functions.env");
        let lines: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        std::fs::write(&env_file, lines.join("\n")).unwrap();
        let root = repo_root();
        let mut cmd = Command::new(root.join(".tools/venv/bin/cargo-lambda"));
        cmd.args(["lambda", "watch", "--ignore-changes", "--invoke-address"])
            .arg("127.0.0.1")
            .arg("--invoke-port")
            .arg(port.to_string())
            .arg("--timeout")
            .arg("300")
            .arg("--env-file")
            .arg(&env_file)
            .current_dir(&root)
            // `cargo test` holds the build lock of target/ while tests run.
            .env("CARGO_TARGET_DIR", root.join("target/lambda-watch"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("watch.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("watch.err")).unwrap());
        for key in KEYS.iter().chain(["AWS_ENDPOINT_URL_LAMBDA"].iter()) {
            cmd.env_remove(key);
        }
        // `cargo test` gives this process its CARGO_PKG_*, CARGO_MANIFEST_DIR, ...
        // Build scripts (ring's) rerun when those change, so passing them on
        // would rebuild every dependency instead of reusing `make test`'s build.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
                || name == "OUT_DIR"
            {
                cmd.env_remove(&key);
            }
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("start cargo lambda watch (installed into .tools/venv by `make stack`)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cargo lambda watch did not listen on {port}; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port, dir }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self, stack: &Stack) -> aws_sdk_lambda::Client {
        let creds = aws_sdk_lambda::config::Credentials::new(
            stack.var("AWS_ACCESS_KEY_ID"),
            stack.var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "stack",
        );
        let cfg = aws_sdk_lambda::config::Builder::new()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(aws_sdk_lambda::config::Region::new(stack.var("AWS_REGION")))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .build();
        aws_sdk_lambda::Client::from_conf(cfg)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // The emulator runs each function as a child `cargo run`: stop them all.
        // `--` makes kill(1) read `-PGID` as a process group, not an option.
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        // Never hang a test run on a process that will not go away.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("cargo lambda watch (pid {pgid}) did not stop within 10 s");
    }
}

/// The functions under the emulator with the stack's settings, their keys
/// in Secrets Manager and a fresh work queue: the queue, the functions'
/// settings, the emulator (kept alive by the caller) and a client of its
/// Invoke API.
struct Functions {
    queue: embed_backfill::queue::SqsQueue,
    vars: HashMap<String, String>,
    emulator: Emulator,
    lambda: aws_sdk_lambda::Client,
}

async fn functions(stack: &Stack) -> Functions {
    let (queue, _) = stack.fresh_queue(60, 5).await;
    let mut vars = keys_in_secrets_manager(stack).await;
    vars.insert("BACKFILL_QUEUE_URL".into(), queue.url().to_string());
    vars.insert("RUST_LOG".into(), "info".into());
    let emulator = Emulator::start(&vars);
    let lambda = emulator.client(stack);
    Functions {
        queue,
        vars,
        emulator,
        lambda,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Invokes `function` with `payload`; the answer, or the function's error body.
async fn invoke(
    lambda: &aws_sdk_lambda::Client,
    function: &str,
    payload: &serde_json::Value,
) -> Result<serde_json::Value, serde_json::Value> {
    let out = lambda
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(
            serde_json::to_vec(payload).unwrap(),
        ))
        .send()
        .await;
    // Lambda answers a function error with 200 and X-Amz-Function-Error; the
    // emulator answers it with 500 and the same error body.
    let out = match out {
        Ok(out) => out,
        Err(aws_sdk_lambda::error::SdkError::ServiceError(e))
            if e.raw().status().as_u16() == 500 =>
        {
            let body = e.raw().body().bytes().unwrap_or_default();
            return Err(serde_json::from_slice(body).unwrap_or(serde_json::Value::Null));
        }
        Err(e) => panic!("invoke {function}: {e:?}"),
    };
    let body: serde_json::Value =
        serde_json::from_slice(out.payload().map(|p| p.as_ref()).unwrap_or(b"null"))
            .unwrap_or(serde_json::Value::Null);
    match out.function_error() {
        Some(_) => Err(body),
        None => Ok(body),
    }
}

fn sample_event(name: &str) -> serde_json::Value {
    let path = repo_root().join("events").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Delivers the queue's messages to the worker function as SQS events of up to
/// 10 records, deletes what it reports done, and leaves its failures: what an
/// event source mapping with ReportBatchItemFailures does. Returns (done, failed).
async fn deliver(
    stack: &Stack,
    lambda: &aws_sdk_lambda::Client,
    queue_url: &str,
) -> (usize, usize) {
    let sqs = stack.sqs_client().await;
    let region = stack.var("AWS_REGION");
    let queue_arn = format!(
        "arn:aws:sqs:{region}:123456789012:{}",
        queue_url.rsplit('/').next().unwrap()
    );
    let (mut done, mut failed) = (0, 0);
    loop {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return (done, failed);
        }
        let records: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let attributes: HashMap<String, String> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": queue_arn,
                    "awsRegion": region,
                })
            })
            .collect();
        let answer = invoke(lambda, "worker", &serde_json::json!({ "Records": records }))
            .await
            .unwrap_or_else(|e| panic!("worker failed as a whole: {e}"));
        let failures: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        for m in &messages {
            if failures.contains(&m.message_id().unwrap()) {
                failed += 1;
            } else {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                done += 1;
            }
        }
    }
}

/// A secret holding `text`; its ARN.
async fn secret(stack: &Stack, text: &str) -> String {
    stack
        .secrets_client()
        .create_secret()
        .name(unique("embed-backfill/keys"))
        .secret_string(text)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap()
}

/// The stack's settings without its keys, which live in two secrets instead,
/// as the template deploys them: Supabase's and the embeddings provider's.
async fn keys_in_secrets_manager(stack: &Stack) -> HashMap<String, String> {
    let mut vars = stack.vars.clone();
    for k in KEYS {
        vars.remove(k);
    }
    for (var, keys) in [
        (
            "BACKFILL_SUPABASE_SECRET_ID",
            &["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SECRET_KEY"][..],
        ),
        ("BACKFILL_OPENAI_SECRET_ID", &["OPENAI_API_KEY"][..]),
    ] {
        let held: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .filter_map(|k| {
                stack
                    .vars
                    .get(*k)
                    .map(|v| (k.to_string(), v.clone().into()))
            })
            .collect();
        let arn = secret(stack, &serde_json::Value::Object(held).to_string()).await;
        vars.insert(var.into(), arn);
    }
    vars
}

fn backfill(vars: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(vars)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run backfill")
}

#[tokio::test]
async fn the_lambda_binaries_run_every_sample_event() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let table = stack.fresh_table("lambda_docs").await;
    let texts = sample_texts(30);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let archived = insert_docs(&pg, &table, ARCHIVE, &refs).await;
    let hunting = format!("Lov om jakt {table}");
    let fishing = format!("Lov om fiske {table}");
    let others = insert_docs(
        &pg,
        &table,
        "other",
        &[Some(hunting.as_str()), Some(fishing.as_str())],
    )
    .await;
    let stack = stack.with("BACKFILL_TABLE", &table);
    let Functions {
        queue,
        vars,
        emulator,
        lambda,
    } = functions(&stack).await;
    let queue_url = queue.url().to_string();

    // A dry run counts and queues nothing.
    let dry = invoke(
        &lambda,
        "dispatcher",
        &sample_event("dispatch-dry-run.json"),
    )
    .await
    .unwrap_or_else(|e| panic!("dry run: {e}"));
    assert_eq!(dry["run_id"], serde_json::Value::Null);
    assert_eq!(dry["documents"], 30);
    assert_eq!(stack.queue_depth(&queue_url).await, 0);

    // Resuming after an id beyond the table's finds nothing to do.
    let resume = invoke(&lambda, "dispatcher", &sample_event("dispatch-resume.json"))
        .await
        .unwrap_or_else(|e| panic!("resume: {e}"));
    assert_eq!(resume["documents"], 0);

    // One archive, then everything left, each drained through the worker function.
    let one = invoke(
        &lambda,
        "dispatcher",
        &sample_event("dispatch-archive.json"),
    )
    .await
    .unwrap_or_else(|e| panic!("archive: {e}"));
    assert_eq!(
        (one["documents"].as_u64(), one["batches"].as_u64()),
        (Some(30), Some(1))
    );
    assert_eq!(deliver(&stack, &lambda, &queue_url).await, (1, 0));
    // Blank documents are skipped, never given a vector: they are taken again.
    let blank = refs
        .iter()
        .filter(|t| t.is_none_or(|t| t.trim().is_empty()))
        .count();
    let all = invoke(&lambda, "dispatcher", &sample_event("dispatch-all.json"))
        .await
        .unwrap_or_else(|e| panic!("all: {e}"));
    assert_eq!(all["documents"], 2 + blank as u64);
    assert_eq!(deliver(&stack, &lambda, &queue_url).await, (1, 0));

    // The CLI invokes the same function through the Lambda API.
    let mut cli_vars = vars.clone();
    cli_vars.insert("AWS_ENDPOINT_URL_LAMBDA".into(), emulator.endpoint());
    let out = backfill(
        &cli_vars,
        &[
            "dispatch",
            "--function",
            "dispatcher",
            "--dry-run",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["documents"], blank as u64,
        "only blanks are left: {answer}"
    );

    // A dispatch cut short by its deadline is continued by the sample event.
    // With batches of 5 a page holds 50 ids: 60 more documents (and the
    // blanks again) take two pages, and a deadline already near allows one.
    let more: Vec<String> = (0..60)
        .map(|i| format!("§ {i} {table} Forskrift om havner."))
        .collect();
    let more_refs: Vec<Option<&str>> = more.iter().map(|t| Some(t.as_str())).collect();
    let late = insert_docs(&pg, &table, ARCHIVE, &more_refs).await;
    let dispatcher = stack.dispatcher(&queue);
    let event = serde_json::json!({"archive": ARCHIVE, "batch_size": 5});
    let soon = Some(tokio::time::Instant::now() + Duration::from_secs(3));
    let partial = handlers::dispatch_event(&dispatcher, event, soon)
        .await
        .unwrap();
    let run_id = partial.summary.run_id.unwrap();
    assert!(partial.continuation.is_some(), "the deadline cut it short");
    assert_eq!(partial.summary.documents, 50, "one page");
    let batches = (more.len() + blank).div_ceil(5);
    // The continuation goes out as the dispatcher binary sends it: an
    // asynchronous (Event) invocation of the function, which finishes the run.
    invoke::continue_async(
        &lambda,
        "dispatcher",
        partial.continuation.as_ref().unwrap(),
    )
    .await
    .unwrap();
    let status = stack.store();
    let started = Instant::now();
    while run_of(&status, run_id).await.state == RunState::Dispatching {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the asynchronous continuation never finished the dispatch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sample continuation event on a dispatched run adds nothing.
    let mut continuation = sample_event("dispatch-continue.json");
    continuation["continue_run"] = serde_json::json!(run_id);
    let rest = invoke(&lambda, "dispatcher", &continuation)
        .await
        .unwrap_or_else(|e| panic!("continue: {e}"));
    assert_eq!(rest["complete"], true, "{rest}");
    assert_eq!(deliver(&stack, &lambda, &queue_url).await, (batches, 0));
    let run = run_of(&stack.store(), run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (run.total_batches as usize, run.batches_done as usize),
        (batches, batches)
    );

    // The sample SQS event names a run this database never had: both records
    // are reported failed, so SQS keeps them, and the event as a whole succeeds.
    let two = invoke(&lambda, "worker", &sample_event("sqs-two-messages.json"))
        .await
        .unwrap_or_else(|e| panic!("sqs sample: {e}"));
    let failed: Vec<&str> = two["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        [
            "059f36b4-87a3-44ab-83d2-661975830a7d",
            "2e1424d4-f796-459a-8184-9c92662be6da"
        ]
    );

    // A malformed event is refused by the function, naming the field.
    let err = invoke(
        &lambda,
        "dispatcher",
        &serde_json::json!({"archiv": ARCHIVE}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("archiv"), "{err}");

    // Every non-empty document holds the vector of its own text.
    let mut ids = archived.clone();
    ids.extend(&others);
    ids.extend(&late);
    let mut all_texts: Vec<Option<&str>> = refs.clone();
    all_texts.extend([Some(hunting.as_str()), Some(fishing.as_str())]);
    all_texts.extend(more_refs.iter().copied());
    let stored = vectors(&pg, &table, &ids).await;
    for (id, text) in ids.iter().zip(&all_texts) {
        match text.filter(|t| !t.trim().is_empty()) {
            Some(t) => assert_eq!(
                stored.get(id),
                Some(&stack.expected_vector(t).await),
                "{id}"
            ),
            None => assert!(!stored.contains_key(id), "{id} is empty"),
        }
    }
    drop(emulator);
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// Batch mode as deployed: the dispatcher puts the run into jobs instead of
/// on the queue, and the scheduled poller submits and collects them through
/// the Batch API. The stand-in is private so its counters are this test's, and
/// the table too, since a poller takes the jobs of every run over its table.
#[tokio::test]
async fn batch_mode_runs_through_the_dispatcher_and_the_scheduled_poller() {
    let standin = Standin::spawn(&[]);
    let stack = Stack::load();
    let pg = stack.pg().await;
    let table = stack.fresh_table("lambda_batch_docs").await;
    let texts = sample_texts(30);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let ids = insert_docs(&pg, &table, ARCHIVE, &refs).await;
    let stack = stack
        .with("BACKFILL_TABLE", &table)
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let Functions {
        queue,
        emulator,
        lambda,
        ..
    } = functions(&stack).await;
    let queue_url = queue.url().to_string();

    // The sample event dispatches the archive the documents were put in.
    let event = sample_event("dispatch-batch.json");
    assert_eq!(event["archive"], ARCHIVE, "{event}");
    let dispatched = invoke(&lambda, "dispatcher", &event)
        .await
        .unwrap_or_else(|e| panic!("batch dispatch: {e}"));
    assert_eq!(
        (
            dispatched["documents"].as_u64(),
            dispatched["batches"].as_u64(),
            dispatched["complete"].as_bool()
        ),
        (Some(30), Some(1), Some(true)),
        "{dispatched}"
    );
    let run_id: RunId = dispatched["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id: {dispatched}"))
        .parse()
        .unwrap();
    assert_eq!(
        stack.queue_depth(&queue_url).await,
        0,
        "batch mode queues no message"
    );

    // The stand-in completes a batch when it is first looked at: one tick
    // submits the job, the next collects it. A few more allow for slowness.
    let scheduled = sample_event("poll-scheduled.json");
    let store = stack.store();
    let started = Instant::now();
    let mut ticks = Vec::new();
    for _ in 0..10 {
        let tick = invoke(&lambda, "poller", &scheduled)
            .await
            .unwrap_or_else(|e| panic!("scheduled poll: {e}"));
        for field in [
            "submitted",
            "waiting",
            "running",
            "collected",
            "batches_ended",
            "batches_requeued",
            "failed",
            "left",
        ] {
            assert!(tick[field].is_u64(), "{field}: {tick}");
        }
        assert_eq!(tick["errors"], serde_json::json!([]), "{tick}");
        ticks.push(tick);
        if run_of(&store, run_id).await.state.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    eprintln!(
        "batch mode: {} poller invocation(s) in {:.1?}",
        ticks.len(),
        started.elapsed()
    );
    let total = |field: &str| -> u64 { ticks.iter().map(|t| t[field].as_u64().unwrap()).sum() };
    assert_eq!(
        (
            total("submitted"),
            total("collected"),
            total("batches_ended"),
            total("failed")
        ),
        (1, 1, 1, 0),
        "{ticks:?}"
    );
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    let written: Vec<(i64, &str)> = ids
        .iter()
        .zip(&refs)
        .filter_map(|(id, t)| t.filter(|t| !t.trim().is_empty()).map(|t| (*id, t)))
        .collect();
    assert_eq!(
        (run.documents_embedded, run.documents_failed),
        (written.len() as u64, 0),
        "{run:?}"
    );
    // The poller's records add up to the run, at the batch price.
    let log = std::fs::read_to_string(emulator.dir.join("watch.log")).unwrap();
    let records = emf::records(&log);
    let poller = || emf::of(&records, "poller", None);
    assert_eq!(poller().count(), ticks.len(), "one record per tick");
    assert_eq!(emf::sum(poller(), "JobsSubmitted"), 1.0);
    assert_eq!(emf::sum(poller(), "JobsCollected"), 1.0);
    assert_eq!(
        emf::sum(poller(), "DocumentsEmbedded"),
        run.documents_embedded as f64
    );
    assert_eq!(emf::sum(poller(), "Tokens"), run.tokens_billed as f64);
    assert!((emf::sum(poller(), "CostUsd") - run.actual_cost_usd).abs() < 1e-9);

    // Every vector came from the Batch API: read before the expected vectors
    // below, which are direct requests.
    let stats = standin.stats().await;
    assert_eq!(
        (stats["batches"].as_u64(), stats["requests"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
    // Long texts are sent cut to the model's input limit.
    let sent: Vec<String> = written
        .iter()
        .map(|(_, t)| {
            embed_backfill::tokens::truncate(t, embed_backfill::tokens::MAX_INPUT_TOKENS)
                .text
                .into_owned()
        })
        .collect();
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    let expected = stack.expected_vectors(&sent).await;
    let stored = vectors(&pg, &table, &ids).await;
    assert_eq!(stored.len(), written.len(), "blank documents get no vector");
    for ((id, _), want) in written.iter().zip(expected) {
        let got = stored
            .get(id)
            .unwrap_or_else(|| panic!("{id} has no vector"));
        let close =
            got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close, "{id} holds another text's vector");
    }

    // Anything but an object is a mistaken invocation, refused as such.
    for wrong in [serde_json::json!("tick"), serde_json::json!([{}])] {
        let err = invoke(&lambda, "poller", &wrong).await.unwrap_err();
        assert!(
            err.to_string().contains("must be a JSON object"),
            "{wrong}: {err}"
        );
    }
    drop(emulator);
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_come_from_secrets_manager_and_bad_secrets_are_named_not_shown() {
    let stack = Stack::load();
    let vars = keys_in_secrets_manager(&stack).await;
    let out = backfill(&vars, &["verify", "--archive", &unique("none"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let leaked = "sk-must-not-leak";
    let cases = [
        (
            format!(r#"{{"OPENAI_APIKEY": "{leaked}"}}"#),
            "holds OPENAI_APIKEY",
        ),
        (format!(r#""{leaked}""#), "is not a JSON object"),
        (
            format!(r#"{{"OPENAI_API_KEY": ["{leaked}"]}}"#),
            "OPENAI_API_KEY must be",
        ),
    ];
    for (text, expected) in cases {
        let arn = secret(&stack, &text).await;
        let mut bad = vars.clone();
        bad.insert("BACKFILL_OPENAI_SECRET_ID".into(), arn.clone());
        let out = backfill(&bad, &["verify"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(expected) && stderr.contains(&arn),
            "{stderr}"
        );
        assert!(!stderr.contains(leaked), "{stderr}");
    }
    let mut missing = vars.clone();
    missing.insert(
        "BACKFILL_SUPABASE_SECRET_ID".into(),
        unique("no-such-secret"),
    );
    let out = backfill(&missing, &["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secretsmanager:GetSecretValue"), "{stderr}");
}

#[test]
fn the_emf_checks_refuse_what_the_specification_refuses() {
    let good = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["Function"]],"Metrics":[{"Name":"Tokens","Unit":"Count"}]}]},"Function":"worker","Tokens":5}"#;
    assert!(emf::check(good).is_ok());
    let bad = [
        (
            good.replace(r#""Timestamp":1,"#, ""),
            "Timestamp is missing",
        ),
        (good.replace("\"Count\"", "\"Tokens\""), "is not one of"),
        (
            good.replace(r#""Function":"worker""#, r#""Function":7"#),
            "not a string",
        ),
        (good.replace(r#","Function":"worker""#, ""), "has no member"),
        (
            good.replace(r#""Tokens":5"#, r#""Tokens":"5""#),
            "not a number",
        ),
        (
            good.replace(r#""Namespace":"N""#, r#""Namespace":"""#),
            "1-1024",
        ),
    ];
    for (line, why) in bad {
        let err = emf::check(&line).unwrap_err();
        assert!(err.contains(why), "{err} for {line}");
    }
}

/// The functions' metrics records, read back from their standard output as
/// CloudWatch Logs would receive it: every one valid EMF, and their sums for
/// one run equal to what its status row counted.
#[tokio::test]
async fn the_functions_metrics_add_up_to_the_status_row() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let table = stack.fresh_table("lambda_metrics").await;
    let archive = unique("metrics");
    let mut texts: Vec<Option<String>> = (0..23)
        .map(|i| Some(format!("§ {i} {table} Lov om målinger og tall.")))
        .collect();
    texts[7] = Some(format!("§ 7 {table} ødelagt [[fail:400]]"));
    texts[12] = Some("   ".into());
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    insert_docs(&pg, &table, &archive, &refs).await;
    let stack = stack.with("BACKFILL_TABLE", &table);
    let Functions {
        queue,
        emulator,
        lambda,
        ..
    } = functions(&stack).await;
    let queue_url = queue.url().to_string();

    let answer = invoke(
        &lambda,
        "dispatcher",
        &serde_json::json!({"archive": archive, "batch_size": 5, "embedding_batch_size": 5}),
    )
    .await
    .unwrap_or_else(|e| panic!("dispatch: {e}"));
    let run_id = answer["run_id"].as_str().unwrap().to_string();
    assert_eq!(deliver(&stack, &lambda, &queue_url).await, (5, 0));
    let run = run_of(&stack.store(), run_id.parse::<RunId>().unwrap()).await;
    assert_eq!(run.state, RunState::CompletedWithErrors, "{run:?}");

    let log = std::fs::read_to_string(emulator.dir.join("watch.log")).unwrap();
    let records = emf::records(&log);
    let worker: Vec<_> = emf::of(&records, "worker", Some(&run_id))
        .cloned()
        .collect();
    assert_eq!(worker.len(), 5, "one record per delivered batch");
    let total = |name: &str| emf::sum(worker.iter(), name);
    assert_eq!(total("DocumentsEmbedded"), run.documents_embedded as f64);
    assert_eq!(total("DocumentsSkipped"), run.documents_skipped as f64);
    assert_eq!(total("DocumentsFailed"), run.documents_failed as f64);
    assert_eq!(run.documents_failed, 1, "{run:?}");
    assert_eq!(total("Tokens"), run.tokens_billed as f64);
    assert!((total("CostUsd") - run.actual_cost_usd).abs() < 1e-9);
    assert_eq!(total("BatchesDone"), run.batches_done as f64);
    assert_eq!(total("BatchesFailed"), run.batches_failed as f64);
    // The rejected input is bisected: more requests than batches.
    assert!(total("ApiRequests") > 5.0, "{}", total("ApiRequests"));
    assert_eq!(total("ApiThrottled") + total("ApiServerErrors"), 0.0);
    let first = &worker[0];
    for (name, unit) in [
        ("DocumentsEmbedded", "Count"),
        ("Tokens", "Count"),
        ("BatchDuration", "Milliseconds"),
        ("ApiLatency", "Milliseconds"),
        ("RateWait", "Milliseconds"),
    ] {
        assert_eq!(emf::unit(first, name).as_deref(), Some(unit), "{name}");
    }
    let sets = first["_aws"]["CloudWatchMetrics"][0]["Dimensions"].clone();
    assert_eq!(
        sets,
        serde_json::json!([["Function", "Run"], ["Function"]]),
        "the dashboard reads [Function]; a run's own figures [Function, Run]"
    );

    let dispatcher: Vec<_> = emf::of(&records, "dispatcher", Some(&run_id)).collect();
    assert_eq!(dispatcher.len(), 1);
    assert_eq!(
        emf::sum(dispatcher.iter().copied(), "BatchesQueued"),
        run.total_batches as f64
    );
    assert_eq!(
        emf::sum(dispatcher.iter().copied(), "DocumentsQueued"),
        run.total_documents as f64
    );
    assert_eq!(
        emf::sum(dispatcher.iter().copied(), "EstimatedTokens"),
        run.estimated_tokens as f64
    );
}

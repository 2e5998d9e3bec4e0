//! Keys rotated in Secrets Manager (the stack's moto) while a warm worker
//! runs: built once as the Lambdas build it, from BACKFILL_OPENAI_SECRET_ID
//! and BACKFILL_SUPABASE_SECRET_ID, it takes a rotated key after one refusal
//! or when its copy is older than the refresh interval, and a key that stays
//! wrong fails with the usual error after a single read of its secret.
//! GetSecretValue calls are counted by wrapping the moto client; refusals by
//! the embeddings server (run in this process, so the test can change the key
//! it accepts) and by a private gateway (which a fault gives a new key).

mod common;

use async_trait::async_trait;
use common::{
    backfill, insert_texts, json_of, options, run_of, standin_stats, unique, Gateway, Stack,
};
use devstack::standin;
use embed_backfill::dispatch::Dispatcher;
use embed_backfill::embedder::EmbedError;
use embed_backfill::keys::{Fetch, Timing};
use embed_backfill::queue::{IncomingMessage, MemoryQueue, Queue};
use embed_backfill::secret::Secret;
use embed_backfill::secrets_manager::{self, SecretsError};
use embed_backfill::setup;
use embed_backfill::store::{RunState, Store, StoreError};
use embed_backfill::worker::{Worker, WorkerError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The stack's Secrets Manager, counting the reads the library makes.
struct Moto {
    client: aws_sdk_secretsmanager::Client,
    reads: AtomicUsize,
}

impl Moto {
    fn new(stack: &Stack) -> Arc<Self> {
        Arc::new(Self {
            client: stack.secrets_client(),
            reads: AtomicUsize::new(0),
        })
    }

    /// A secret holding the stack's Supabase key; its ARN.
    async fn supabase_secret(&self, stack: &Stack) -> String {
        self.create(json!({ "SUPABASE_SECRET_KEY": stack.var("SUPABASE_SECRET_KEY") }))
            .await
    }

    /// A secret holding `keys`; its ARN.
    async fn create(&self, keys: serde_json::Value) -> String {
        self.client
            .create_secret()
            .name(unique("embed-backfill/keys"))
            .secret_string(keys.to_string())
            .send()
            .await
            .unwrap()
            .arn
            .unwrap()
    }

    /// A rotation: the secret's new current version.
    async fn rotate(&self, arn: &str, keys: serde_json::Value) {
        self.client
            .put_secret_value()
            .secret_id(arn)
            .secret_string(keys.to_string())
            .send()
            .await
            .unwrap();
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Fetch for Moto {
    async fn fetch(&self, id: &str) -> Result<HashMap<String, Secret>, SecretsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.client.fetch(id).await
    }
}

/// An embeddings server in this process, so the test can change the one key
/// it accepts while the worker runs.
struct LiveStandin {
    url: String,
    key: standin::ApiKey,
}

impl LiveStandin {
    async fn start(key: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = standin::ApiKey::from(key);
        tokio::spawn(standin::serve(
            listener,
            standin::Config {
                api_key: key.clone(),
                ..standin::Config::default()
            },
        ));
        Self { url, key }
    }

    /// Its 401 answers.
    async fn refusals(&self) -> u64 {
        standin_stats(&self.url).await["status_401"]
            .as_u64()
            .unwrap()
    }
}

fn openai_key() -> String {
    format!("sk-test-{}", unique("k"))
}

/// The stack's settings with no key of their own: the embeddings server at
/// `embeddings`, and `secrets` (variable, ARN) to read the keys from.
fn keyless(stack: &Stack, embeddings: &str, secrets: &[(&str, &str)]) -> Stack {
    let mut s = stack
        .without("OPENAI_API_KEY")
        .without("SUPABASE_SECRET_KEY")
        .without("SUPABASE_SERVICE_ROLE_KEY")
        .with("OPENAI_BASE_URL", &format!("{embeddings}/v1"));
    for (var, arn) in secrets {
        s = s.with(var, arn);
    }
    s
}

/// Settings that read the embeddings key (`held`, for the server at
/// `embeddings`) and the stack's Supabase key from two secrets on `moto`;
/// and the embeddings secret's ARN, to rotate.
async fn two_secrets(stack: &Stack, moto: &Moto, embeddings: &str, held: &str) -> (Stack, String) {
    let openai = moto.create(json!({ "OPENAI_API_KEY": held })).await;
    let supabase = moto.supabase_secret(stack).await;
    let settings = keyless(
        stack,
        embeddings,
        &[
            ("BACKFILL_OPENAI_SECRET_ID", &openai),
            ("BACKFILL_SUPABASE_SECRET_ID", &supabase),
        ],
    );
    (settings, openai)
}

/// A warm worker: its settings read once, as at a cold start.
struct Warm {
    store: Arc<dyn Store>,
    worker: Worker,
    dispatcher: Dispatcher<Arc<MemoryQueue>>,
    queue: Arc<MemoryQueue>,
}

async fn warm(settings: &Stack, moto: &Arc<Moto>, timing: Timing) -> Warm {
    let env = secrets_manager::load(settings.env(), moto.clone(), timing)
        .await
        .unwrap();
    let store = setup::store(&env).unwrap();
    let worker = setup::worker(&env, &store).unwrap();
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = setup::dispatcher(&env, &store, queue.clone()).unwrap();
    Warm {
        store,
        worker,
        dispatcher,
        queue,
    }
}

impl Warm {
    /// Dispatches `batches` batches of two new documents; the run and its
    /// messages.
    async fn dispatch(
        &self,
        stack: &Stack,
        batches: usize,
    ) -> (embed_backfill::ids::RunId, Vec<IncomingMessage>) {
        let archive = unique("keys");
        let texts: Vec<String> = (0..batches * 2)
            .map(|i| format!("§ {i} {archive} Forskrift om nøkler som skiftes."))
            .collect();
        insert_texts(&stack.pg().await, &archive, &texts).await;
        let summary = self
            .dispatcher
            .dispatch(&options(&format!(
                r#"{{"archive": "{archive}", "batch_size": 2}}"#
            )))
            .await
            .unwrap();
        assert_eq!(summary.batches, batches as u64);
        let messages = self
            .queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message)
            .collect::<Vec<_>>();
        assert_eq!(messages.len(), batches);
        (summary.run_id.unwrap(), messages)
    }
}

const LONG: Timing = Timing {
    refresh_every: Duration::from_secs(600),
    refusal_gap: Timing::REFUSAL_GAP,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_embeddings_key_is_taken_after_one_refusal() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    let (a, b) = (openai_key(), openai_key());
    let live = LiveStandin::start(&a).await;
    let (settings, openai) = two_secrets(&stack, &moto, &live.url, &a).await;
    let warm = warm(&settings, &moto, LONG).await;
    let (run, messages) = warm.dispatch(&stack, 2).await;
    warm.worker.handle(&messages[0], None).await.unwrap();
    assert_eq!(moto.reads(), 2, "each secret once, at the cold start");
    assert_eq!(live.refusals().await, 0);

    moto.rotate(&openai, json!({ "OPENAI_API_KEY": b })).await;
    live.key.set(&b);
    let report = warm.worker.handle(&messages[1], None).await.unwrap();
    assert_eq!(report.embedded, 2, "{report:?}");
    assert_eq!(live.refusals().await, 1, "the old key, once");
    assert_eq!(moto.reads(), 3, "one read of the rotated secret");
    let done = run_of(&warm.store, run).await;
    assert_eq!(done.state, RunState::Completed, "{done:?}");
    assert_eq!(done.documents_embedded, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_key_is_read_again_before_use_without_a_refusal() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    let (a, b) = (openai_key(), openai_key());
    let live = LiveStandin::start(&a).await;
    let (settings, openai) = two_secrets(&stack, &moto, &live.url, &a).await;
    let refresh_every = Duration::from_millis(300);
    let warm = warm(
        &settings,
        &moto,
        Timing {
            refresh_every,
            ..LONG
        },
    )
    .await;
    let (run, messages) = warm.dispatch(&stack, 2).await;
    warm.worker.handle(&messages[0], None).await.unwrap();
    let reads = moto.reads();

    moto.rotate(&openai, json!({ "OPENAI_API_KEY": b })).await;
    live.key.set(&b);
    tokio::time::sleep(refresh_every * 2).await;
    warm.worker.handle(&messages[1], None).await.unwrap();
    assert_eq!(live.refusals().await, 0, "the new key was read before use");
    assert!(moto.reads() > reads, "{} reads", moto.reads());
    let done = run_of(&warm.store, run).await;
    assert_eq!(done.documents_embedded, 4, "{done:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_stays_wrong_fails_after_one_read_not_a_loop() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    let wrong = format!("sk-wrong-{}", unique("k"));
    let live = LiveStandin::start(&openai_key()).await;
    let (settings, _) = two_secrets(&stack, &moto, &live.url, &wrong).await;
    let warm = warm(&settings, &moto, LONG).await;
    let (_, messages) = warm.dispatch(&stack, 2).await;
    for (message, refusals) in messages.iter().zip([1, 2]) {
        let err = warm.worker.handle(message, None).await.unwrap_err();
        assert!(
            matches!(
                &err,
                WorkerError::Embed(EmbedError::InvalidKey {
                    key_var: "OPENAI_API_KEY",
                    ..
                })
            ),
            "{err}"
        );
        assert!(!err.to_string().contains(&wrong), "the key leaked: {err}");
        assert_eq!(live.refusals().await, refusals);
        assert_eq!(
            moto.reads(),
            3,
            "the cold start's two, and one after the first refusal only"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_supabase_key_is_taken_after_one_refusal() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    // A gateway of this test's own, in front of the stack's PostgREST: its
    // key can change without disturbing the tests beside it.
    let gateway = Gateway::spawn(&stack, &stack.var("STACK_POSTREST_URL"), 1000);
    let old = stack.var("SUPABASE_SECRET_KEY");
    let supabase = moto.create(json!({ "SUPABASE_SECRET_KEY": old })).await;
    let settings = keyless(
        &stack,
        &stack.var("STANDIN_URL"),
        &[("BACKFILL_SUPABASE_SECRET_ID", &supabase)],
    )
    .with("SUPABASE_URL", &gateway.url());
    let env = secrets_manager::load(settings.env(), moto.clone(), LONG)
        .await
        .unwrap();
    let store = setup::store(&env).unwrap();
    let spec = setup::spec(&env).unwrap();
    store.coverage(&spec, Some(&unique("none"))).await.unwrap();
    assert_eq!(moto.reads(), 1);

    let new = format!("sb_secret_{}", uuid::Uuid::new_v4().simple());
    gateway.faults(json!({ "secret_key": new })).await;
    moto.rotate(&supabase, json!({ "SUPABASE_SECRET_KEY": new }))
        .await;
    // The old key is refused now: a store that keeps it fails.
    let fixed = setup::store(&stack.with("SUPABASE_URL", &gateway.url()).env()).unwrap();
    let err = fixed.coverage(&spec, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    gateway.reset_stats().await;

    store.coverage(&spec, Some(&unique("none"))).await.unwrap();
    assert_eq!(moto.reads(), 2, "one read of the rotated secret");
    assert_eq!(gateway.stats().await["rejected"], 1, "the old key, once");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dispatcher_needs_only_the_supabase_secret() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    let supabase = moto.supabase_secret(&stack).await;
    let settings = keyless(
        &stack,
        &stack.var("STANDIN_URL"),
        &[("BACKFILL_SUPABASE_SECRET_ID", &supabase)],
    );
    let env = secrets_manager::load(settings.env(), moto.clone(), LONG)
        .await
        .unwrap();
    let store = setup::store(&env).unwrap();
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = setup::dispatcher(&env, &store, queue.clone()).unwrap();
    let archive = unique("dispatch-only");
    let texts: Vec<String> = (0..3)
        .map(|i| format!("§ {i} {archive} Lov om utsendelse."))
        .collect();
    insert_texts(&stack.pg().await, &archive, &texts).await;
    let summary = dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap();
    assert_eq!((summary.documents, summary.batches), (3, 1), "{summary:?}");
    let queued = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(queued.len(), 1);
    // A worker with these settings has no key, and says which.
    let err = setup::worker(&env, &store).unwrap_err().to_string();
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reads_the_secrets_its_environment_names() {
    let stack = Stack::load();
    let moto = Moto::new(&stack);
    let supabase = moto.supabase_secret(&stack).await;
    let openai = moto
        .create(json!({ "OPENAI_API_KEY": stack.var("OPENAI_API_KEY") }))
        .await;
    let settings = keyless(
        &stack,
        &stack.var("STANDIN_URL"),
        &[
            ("BACKFILL_SUPABASE_SECRET_ID", &supabase),
            ("BACKFILL_OPENAI_SECRET_ID", &openai),
        ],
    );
    let verify = ["verify", "--archive", &unique("none"), "--json"];
    json_of(&backfill(&settings, &verify));

    let leaked = "sk-must-not-leak";
    let misplaced = moto
        .create(json!({ "SUPABASE_SECRET_KEY": stack.var("SUPABASE_SECRET_KEY"), "OPENAI_API_KEY": leaked }))
        .await;
    let doubled = moto.create(json!({ "OPENAI_API_KEY": leaked })).await;
    let cases = [
        (
            settings.with("BACKFILL_SUPABASE_SECRET_ID", &misplaced),
            vec![misplaced.as_str(), "BACKFILL_OPENAI_SECRET_ID"],
        ),
        (
            settings.with("BACKFILL_SECRET_ID", &doubled),
            vec![doubled.as_str(), openai.as_str(), "OPENAI_API_KEY"],
        ),
        (
            settings.with("BACKFILL_KEY_REFRESH_MINUTES", "0"),
            vec!["BACKFILL_KEY_REFRESH_MINUTES", "1 to 1440"],
        ),
    ];
    for (wrong, expected) in cases {
        let out = backfill(&wrong, &verify);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        for part in expected {
            assert!(stderr.contains(part), "{part}: {stderr}");
        }
        assert!(!stderr.contains(leaked), "{stderr}");
    }
}

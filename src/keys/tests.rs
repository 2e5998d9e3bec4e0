//! The cache over a stand-in for Secrets Manager that counts its reads, in
//! tokio's paused time; and how `secrets_manager::load` spreads keys over
//! the secrets the settings name.

use super::*;
use crate::config::Env;
use futures::future::join_all;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Secrets by id: their text, or `None` while reading them fails.
#[derive(Default)]
struct Fake {
    texts: Mutex<HashMap<String, Option<String>>>,
    reads: AtomicUsize,
    delay: Mutex<Duration>,
}

impl Fake {
    fn with(secrets: &[(&str, &str)]) -> Arc<Self> {
        let fake = Arc::new(Self::default());
        for (id, text) in secrets {
            fake.put(id, Some(text));
        }
        fake
    }

    fn put(&self, id: &str, text: Option<&str>) {
        self.texts
            .lock()
            .unwrap()
            .insert(id.into(), text.map(String::from));
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Fetch for Fake {
    async fn fetch(&self, id: &str) -> Result<HashMap<String, Secret>, SecretsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let text = self.texts.lock().unwrap().get(id).cloned().flatten();
        match text {
            Some(text) => secrets_manager::parse(id, &text),
            None => Err(SecretsError::Fetch {
                id: id.into(),
                reason: "unreachable".into(),
            }),
        }
    }
}

const A: &str = r#"{"OPENAI_API_KEY": "sk-a"}"#;
const B: &str = r#"{"OPENAI_API_KEY": "sk-b"}"#;

/// The key of secret `s`, which holds `A`.
async fn key(fake: &Arc<Fake>, timing: Timing) -> Key {
    let secret = StoredSecret::open("s", Scope::Embeddings, fake.clone(), timing)
        .await
        .unwrap();
    let (name, key) = secret.keys().next().unwrap();
    assert_eq!(name, "OPENAI_API_KEY");
    key
}

fn value(s: &Secret) -> &str {
    s.expose()
}

#[tokio::test(start_paused = true)]
async fn a_fixed_key_is_never_read_again() {
    let key = Key::fixed(Secret::new("sk-env"));
    assert_eq!(value(&key.current().await), "sk-env");
    assert_eq!(key.refused(&Secret::new("sk-env")).await, None);
    assert!(!format!("{key:?}").contains("sk-env"));
}

#[tokio::test(start_paused = true)]
async fn refusals_at_once_share_one_read() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(600))).await;
    fake.put("s", Some(B));
    *fake.delay.lock().unwrap() = Duration::from_millis(200);
    let old = Secret::new("sk-a");
    let answers = join_all((0..20).map(|_| key.refused(&old))).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().map(value) == Some("sk-b")));
    assert_eq!(fake.reads(), 2, "the cold start's and one");
    // A refusal of the old key after the read needs none.
    assert_eq!(key.refused(&old).await.as_ref().map(value), Some("sk-b"));
    assert_eq!(fake.reads(), 2);
    assert_eq!(value(&key.current().await), "sk-b");
}

#[tokio::test(start_paused = true)]
async fn a_wrong_key_reads_the_secret_again_once_per_gap() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(600))).await;
    let used = key.current().await;
    let answers = join_all((0..5).map(|_| key.refused(&used))).await;
    assert!(answers.iter().all(Option::is_none));
    assert_eq!(fake.reads(), 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(key.refused(&used).await, None);
    assert_eq!(fake.reads(), 2, "within the gap");
    tokio::time::advance(Duration::from_secs(2)).await;
    fake.put("s", Some(B));
    assert_eq!(key.refused(&used).await.as_ref().map(value), Some("sk-b"));
    assert_eq!(fake.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_key_older_than_the_interval_is_read_again_before_use() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(600))).await;
    fake.put("s", Some(B));
    tokio::time::advance(Duration::from_secs(599)).await;
    assert_eq!(value(&key.current().await), "sk-a");
    assert_eq!(fake.reads(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let now = join_all((0..10).map(|_| key.current())).await;
    assert!(now.iter().all(|k| value(k) == "sk-b"));
    assert_eq!(fake.reads(), 2, "one read for the ten uses");
    assert_eq!(value(&key.current().await), "sk-b");
    assert_eq!(fake.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_keeps_the_key_and_is_tried_again_later() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(600))).await;
    fake.put("s", None);
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(value(&key.current().await), "sk-a");
    assert_eq!(fake.reads(), 2);
    assert_eq!(value(&key.current().await), "sk-a");
    assert_eq!(fake.reads(), 2, "not on every request");
    fake.put("s", Some(B));
    tokio::time::advance(RETRY_FAILED_READ).await;
    assert_eq!(value(&key.current().await), "sk-b");
    assert_eq!(fake.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hung_read_holds_a_request_no_longer_than_its_timeout() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(60))).await;
    *fake.delay.lock().unwrap() = Duration::from_secs(3600);
    tokio::time::advance(Duration::from_secs(61)).await;
    let started = Instant::now();
    assert_eq!(value(&key.current().await), "sk-a");
    assert_eq!(started.elapsed(), READ_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_read_that_no_longer_fits_keeps_the_keys_held() {
    let fake = Fake::with(&[("s", A)]);
    let key = key(&fake, Timing::every(Duration::from_secs(600))).await;
    let used = key.current().await;
    for (text, gap) in [
        (r#"{"SUPABASE_SECRET_KEY": "sb_secret_x"}"#, 0),
        (
            r#"{"OPENAI_API_KEY": "sk-b", "SUPABASE_SECRET_KEY": "sb_secret_x"}"#,
            31,
        ),
        (r#"{"AZURE_OPENAI_API_KEY": "k"}"#, 31),
    ] {
        tokio::time::advance(Duration::from_secs(gap)).await;
        fake.put("s", Some(text));
        assert_eq!(key.refused(&used).await, None, "{text}");
        assert_eq!(value(&key.current().await), "sk-a");
    }
    assert_eq!(fake.reads(), 4);
}

fn env(vars: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::new(move |name: &str| vars.get(name).cloned())
}

const TIMING: Timing = Timing {
    refresh_every: Duration::from_secs(600),
    refusal_gap: Timing::REFUSAL_GAP,
};

#[tokio::test]
async fn scoped_secrets_give_each_key_from_its_own() {
    let fake = Fake::with(&[
        ("supa", r#"{"SUPABASE_SECRET_KEY": "sb_secret_from_sm"}"#),
        ("oa", r#"{"OPENAI_API_KEY": "sk-from-sm"}"#),
    ]);
    let env = env(&[
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("BACKFILL_SUPABASE_SECRET_ID", "supa"),
        ("BACKFILL_OPENAI_SECRET_ID", "oa"),
        ("OPENAI_API_KEY", "sk-from-env"),
    ]);
    let env = secrets_manager::load(env, fake.clone(), TIMING)
        .await
        .unwrap();
    let supabase = env.supabase().unwrap();
    assert_eq!(value(&supabase.key.current().await), "sb_secret_from_sm");
    let embedding = env.embedding().unwrap();
    let crate::config::ProviderSettings::OpenAi {
        api_key: Some(key), ..
    } = &embedding.provider
    else {
        panic!("{embedding:?}");
    };
    assert_eq!(value(&key.current().await), "sk-from-sm", "a secret wins");
    assert_eq!(fake.reads(), 2);
}

#[tokio::test]
async fn a_dispatcher_needs_no_embeddings_key() {
    let fake = Fake::with(&[("supa", r#"{"SUPABASE_SECRET_KEY": "sb_secret_x"}"#)]);
    let env = env(&[
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("BACKFILL_SUPABASE_SECRET_ID", "supa"),
    ]);
    let env = secrets_manager::load(env, fake, TIMING).await.unwrap();
    assert!(env.supabase().is_ok());
    let embedding = env.embedding().unwrap();
    let err = embedding.require_key().unwrap_err().to_string();
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
}

#[tokio::test]
async fn a_key_in_two_secrets_names_both_and_no_value() {
    let fake = Fake::with(&[
        ("all", r#"{"OPENAI_API_KEY": "sk-leaked-1"}"#),
        ("oa", r#"{"OPENAI_API_KEY": "sk-leaked-2"}"#),
    ]);
    let env = env(&[
        ("BACKFILL_SECRET_ID", "all"),
        ("BACKFILL_OPENAI_SECRET_ID", "oa"),
    ]);
    let err = secrets_manager::load(env, fake, TIMING)
        .await
        .err()
        .unwrap()
        .to_string();
    for part in [
        "OPENAI_API_KEY",
        "all (BACKFILL_SECRET_ID)",
        "oa (BACKFILL_OPENAI_SECRET_ID)",
    ] {
        assert!(err.contains(part), "{err}");
    }
    assert!(!err.contains("leaked"), "{err}");
}

#[tokio::test]
async fn a_key_in_the_wrong_secret_names_the_right_one() {
    let cases = [
        (
            "BACKFILL_SUPABASE_SECRET_ID",
            r#"{"SUPABASE_SECRET_KEY": "sb_secret_x", "OPENAI_API_KEY": "sk-leaked"}"#,
            "BACKFILL_OPENAI_SECRET_ID",
        ),
        (
            "BACKFILL_OPENAI_SECRET_ID",
            r#"{"SUPABASE_SERVICE_ROLE_KEY": "eyJ-leaked"}"#,
            "BACKFILL_SUPABASE_SECRET_ID",
        ),
    ];
    for (var, text, home) in cases {
        let fake = Fake::with(&[("misplaced", text)]);
        let err = secrets_manager::load(env(&[(var, "misplaced")]), fake, TIMING)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("misplaced") && err.contains(var) && err.contains(home),
            "{err}"
        );
        assert!(!err.contains("leaked"), "{err}");
    }
}

#[tokio::test]
async fn without_secrets_the_keys_are_the_environment_s() {
    let fake = Fake::with(&[]);
    let env = env(&[("OPENAI_API_KEY", "sk-env")]);
    let env = secrets_manager::load(env, fake.clone(), TIMING)
        .await
        .unwrap();
    let embedding = env.embedding().unwrap();
    assert!(embedding.require_key().is_ok());
    assert_eq!(fake.reads(), 0);
}

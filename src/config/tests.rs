use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::new(move |k: &str| map.get(k).cloned())
}

#[test]
fn supabase_url_gets_the_rest_path() {
    let e = env(&[
        ("SUPABASE_URL", "https://abc.supabase.co/"),
        ("SUPABASE_SERVICE_ROLE_KEY", "eyJx.eyJy.z"),
    ]);
    let s = e.supabase().unwrap();
    assert_eq!(s.rest_url, "https://abc.supabase.co/rest/v1");
    assert_eq!(s.key_source, KeySource::ServiceRoleKey);
    let local = env(&[
        ("SUPABASE_URL", "http://127.0.0.1:1"),
        ("SUPABASE_REST_PATH", "/"),
        ("SUPABASE_SECRET_KEY", "sb_secret_x"),
    ]);
    let s = local.supabase().unwrap();
    assert_eq!(s.rest_url, "http://127.0.0.1:1");
    assert_eq!(s.key_source, KeySource::SecretKey);
}

#[test]
fn missing_values_name_the_variable() {
    let e = env(&[("SUPABASE_URL", "https://abc.supabase.co")]);
    let err = e.supabase().unwrap_err().to_string();
    assert!(err.contains("SUPABASE_SERVICE_ROLE_KEY"), "{err}");
    let err = env(&[])
        .embedding()
        .unwrap()
        .require_key()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("OPENAI_API_KEY is not set"), "{err}");
    let azure = env(&[
        ("EMBEDDING_PROVIDER", "azure"),
        ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com"),
    ]);
    let err = azure.embedding().unwrap_err().to_string();
    assert!(
        err.starts_with("AZURE_OPENAI_DEPLOYMENT is not set"),
        "{err}"
    );
    let err = env(&[("EMBEDDING_PROVIDER", "bedrock")])
        .embedding()
        .unwrap_err()
        .to_string();
    assert!(err.contains("openai, azure or compatible"), "{err}");
    let err = env(&[("EMBEDDING_PROVIDER", "compatible")])
        .embedding()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("OPENAI_BASE_URL is not set"), "{err}");
}

#[test]
fn instances_share_the_budget() {
    let key = ("OPENAI_API_KEY", "sk-x");
    let whole = env(&[key, ("BACKFILL_TPM_LIMIT", "10000000")])
        .embedding()
        .unwrap();
    assert_eq!(whole.budget.tokens_per_minute, Some(10_000_000));
    let shared = env(&[
        key,
        ("BACKFILL_TPM_LIMIT", "10000000"),
        ("BACKFILL_RPM_LIMIT", "10000"),
        ("BACKFILL_RATE_SHARES", "8"),
    ])
    .embedding()
    .unwrap();
    assert_eq!(shared.budget.tokens_per_minute, Some(10_000_000));
    assert_eq!(shared.budget.shares, 8);
    let err = env(&[key, ("BACKFILL_RATE_SHARES", "0")])
        .embedding()
        .unwrap_err();
    assert!(err.to_string().contains("BACKFILL_RATE_SHARES"), "{err}");
}

#[test]
fn identifiers_are_validated() {
    let e = env(&[("BACKFILL_TABLE", "docs; drop table x")]);
    let err = e.target().unwrap_err().to_string();
    assert!(err.contains("BACKFILL_TABLE"), "{err}");
    assert_eq!(env(&[]).target().unwrap().table, "lovdata_documents");
}

#[test]
fn the_key_refresh_is_minutes_within_a_day() {
    assert_eq!(env(&[]).key_refresh(), Ok(Duration::from_secs(600)));
    let one = env(&[("BACKFILL_KEY_REFRESH_MINUTES", "1440")]);
    assert_eq!(one.key_refresh(), Ok(Duration::from_secs(86_400)));
    for wrong in ["0", "1441", "-5", "2.5", "ten"] {
        let err = env(&[("BACKFILL_KEY_REFRESH_MINUTES", wrong)])
            .key_refresh()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BACKFILL_KEY_REFRESH_MINUTES") && err.contains("1 to 1440"),
            "{err}"
        );
    }
}

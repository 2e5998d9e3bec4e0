//! How PostgREST's error bodies become [`StoreError`]s. The integration tests
//! meet most of them on the real stack; a missing function cannot be staged
//! there without breaking the tests running beside it, so it is here.

use super::*;
use crate::secret::Secret;

fn rest() -> Rest {
    Rest::new(&SupabaseConfig {
        rest_url: "http://127.0.0.1:9/rest/v1".into(),
        key: Key::fixed(Secret::new("sb_secret_abc")),
        key_source: KeySource::SecretKey,
        timeout: Duration::from_secs(1),
    })
}

#[test]
fn a_missing_function_names_the_file_that_defines_it() {
    let body = r#"{"code":"PGRST202","details":"Searched for the function public.backfill_begin_batch with parameters p_lease_seconds, p_receive_count, p_run_id, p_seq or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.","hint":null,"message":"Could not find the function public.backfill_begin_batch(p_lease_seconds, p_receive_count, p_run_id, p_seq) in the schema cache"}"#;
    let err = rest().classify("backfill_begin_batch", 404, body);
    let text = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::MissingMigration {
                migration: "idempotent/004_batches.sql",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("scripts/migrate.sh"), "{text}");
    assert!(!err.is_transient());

    let body = r#"{"code":"PGRST202","details":null,"hint":null,"message":"Could not find the function public.backfill_from_the_future(p_x) in the schema cache"}"#;
    let err = rest().classify("backfill_from_the_future", 404, body);
    assert!(
        matches!(
            err,
            StoreError::MissingMigration {
                migration: "idempotent/",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_function_called_has_its_file() {
    let src = include_str!("../mod.rs");
    for called in src.split("\"backfill_").skip(1) {
        let name = format!("backfill_{}", &called[..called.find('"').unwrap()]);
        assert!(
            FUNCTION_MIGRATIONS.iter().any(|(f, _)| *f == name),
            "{name} is called but not in FUNCTION_MIGRATIONS"
        );
    }
}

#[test]
fn the_code_not_the_status_decides_a_retry() {
    let server = |code: &str| {
        rest().classify(
            "backfill_fail_batch",
            500,
            &format!(r#"{{"code":"{code}","message":"m"}}"#),
        )
    };
    for gone in ["P0002", "55000", "22023", "23505"] {
        assert!(!server(gone).is_transient(), "{gone}");
    }
    for passing in ["08006", "40001", "40P01", "55P03", "57P01", "53300"] {
        assert!(server(passing).is_transient(), "{passing}");
    }
    let gateway = rest().classify("backfill_fail_batch", 502, "<html>Bad gateway</html>");
    assert!(gateway.is_transient(), "{gateway}");
    let timeout = server("57014");
    assert!(
        matches!(timeout, StoreError::StatementTimeout { .. }),
        "{timeout}"
    );
}

#[test]
fn a_refused_key_names_its_variable() {
    let err = rest().classify(
        "backfill_run_status",
        401,
        r#"{"code":"42501","message":"permission denied for function backfill_run_status"}"#,
    );
    assert!(
        matches!(
            err,
            StoreError::Unauthorized {
                key_var: "SUPABASE_SECRET_KEY",
                status: 401,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_key_that_cannot_be_a_header_is_refused_before_any_call() {
    // Port 9 answers nothing: an error other than the key's would mean a call.
    let rest = Rest::new(&SupabaseConfig {
        rest_url: "http://127.0.0.1:9/rest/v1".into(),
        key: Key::fixed(Secret::new("sb_secret_abc def")),
        key_source: KeySource::ServiceRoleKey,
        timeout: Duration::from_secs(1),
    });
    let err = rest
        .rpc::<Value>("backfill_run_status", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unauthorized { status: 0, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("SUPABASE_SERVICE_ROLE_KEY"), "{text}");
    assert!(!text.contains("abc"), "{text}");
}

#[test]
fn the_key_goes_on_each_request_as_supabase_wants_it() {
    let names = |key: &str| -> Vec<String> {
        rest()
            .auth_headers(&Secret::new(key))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .collect()
    };
    assert_eq!(names("sb_secret_abc"), ["apikey"]);
    assert_eq!(
        names("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.abc"),
        ["apikey", "authorization"]
    );
}

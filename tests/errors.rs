//! Bad keys, missing migrations and the anon key, against the real stack.

mod common;

use common::{insert_docs, run_of, unique, Stack, Standin};
use embed_backfill::embedder::EmbedError;
use embed_backfill::queue::Queue;
use embed_backfill::store::StoreError;
use embed_backfill::worker::WorkerError;
use std::time::Duration;

#[tokio::test]
async fn a_wrong_service_key_names_the_variable() {
    // Without SUPABASE_SECRET_KEY, which would win over the legacy key.
    let stack = Stack::load().without("SUPABASE_SECRET_KEY");
    let wrong = stack.with(
        "SUPABASE_SERVICE_ROLE_KEY",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLWRvZXMtbm90LW1hdGNo",
    );
    let store = wrong.store();
    let err = store.coverage(&wrong.spec(), None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{text}");
    assert!(text.contains("SUPABASE_SERVICE_ROLE_KEY"), "{text}");
    assert!(
        !text.contains("c2lnbmF0dXJl"),
        "the key leaked into the error: {text}"
    );
}

#[tokio::test]
async fn a_wrong_secret_key_names_the_variable() {
    let stack = Stack::load();
    let wrong = stack.with(
        "SUPABASE_SECRET_KEY",
        "sb_secret_DoesNotMatchAnyKeyOfThisProject0",
    );
    let err = wrong
        .store()
        .coverage(&wrong.spec(), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{text}");
    assert!(text.contains("SUPABASE_SECRET_KEY"), "{text}");
    assert!(
        !text.contains("AnyKeyOfThisProject0"),
        "the key leaked: {text}"
    );
    // The legacy key in the environment is not tried instead.
    assert!(!text.contains("SUPABASE_SERVICE_ROLE_KEY"), "{text}");
}

#[tokio::test]
async fn a_wrong_openai_key_fails_at_once_without_retries() {
    let wrong_key = "sk-wrong-key-0123456789abcdef";
    let text = format!("Lov om vern av nøkler {}", unique("keys"));
    let (err, requests, run) =
        one_failing_batch(&[("OPENAI_API_KEY", wrong_key)], &[Some(text.as_str())]).await;
    assert!(
        matches!(err, WorkerError::Embed(EmbedError::InvalidKey { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("OPENAI_API_KEY"), "{text}");
    assert!(!text.contains("0123456789abcdef"), "the key leaked: {text}");
    assert_eq!(requests, 1, "retried a 401");
    assert_eq!(
        run.batches_failed, 1,
        "a permanent error ends the batch as failed"
    );
    assert!(run
        .last_error
        .unwrap_or_default()
        .contains("OPENAI_API_KEY"));
}

/// Runs one batch of `texts` against a fresh embeddings server with `vars` set;
/// returns the worker's error, the API requests it took, and the run.
async fn one_failing_batch(
    vars: &[(&str, &str)],
    texts: &[Option<&str>],
) -> (WorkerError, u64, embed_backfill::store::RunStatus) {
    let standin = Standin::spawn(&[]);
    let mut stack = Stack::load()
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    for (k, v) in vars {
        stack = stack.with(k, v);
    }
    let pg = stack.pg().await;
    let archive = unique("permanent");
    insert_docs(&pg, "lovdata_documents", &archive, texts).await;
    let (queue, run_id) = stack.dispatch_fresh(&archive, 100).await;
    let mut msg = queue
        .receive(1, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0)
        .message;
    let worker = stack.worker();
    let err = worker.handle(&msg, None).await.unwrap_err();
    let requests = standin.stats().await["requests"].as_u64().unwrap();
    // SQS delivering the same message again costs no API call.
    msg.receive_count = 2;
    let again = worker.handle(&msg, None).await.unwrap_err();
    assert!(matches!(again, WorkerError::FailedBefore(..)), "{again}");
    assert_eq!(standin.stats().await["requests"].as_u64(), Some(requests));
    let run = run_of(&stack.store(), run_id).await;
    (err, requests, run)
}

#[tokio::test]
async fn a_wrong_model_fails_the_batch_not_its_documents() {
    let salt = unique("models");
    let texts: Vec<String> = (0..20)
        .map(|i| format!("§ {i} {salt} Lov om modeller"))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let (err, requests, run) = one_failing_batch(
        &[("OPENAI_EMBEDDING_MODEL", "text-embedding-9-huge")],
        &refs,
    )
    .await;
    assert!(
        matches!(
            err,
            WorkerError::Embed(EmbedError::InvalidRequest { status: 404, .. })
        ),
        "{err}"
    );
    assert_eq!(
        requests, 1,
        "a request-level 404 is neither retried nor bisected"
    );
    assert_eq!((run.batches_failed, run.documents_failed), (1, 20));
    assert!(run.failed_documents.is_empty(), "no document is blamed");
    let last = run.last_error.unwrap_or_default();
    assert!(last.contains("OPENAI_EMBEDDING_MODEL"), "{last}");
}

#[tokio::test]
async fn an_exhausted_quota_fails_at_once_and_says_what_to_do() {
    let salt = unique("quota");
    let quotas = format!("Lov om kvoter {salt}");
    let credit = format!("Lov om kreditt {salt} [[fail:quota]]");
    let (err, requests, run) =
        one_failing_batch(&[], &[Some(quotas.as_str()), Some(credit.as_str())]).await;
    assert!(
        matches!(err, WorkerError::Embed(EmbedError::QuotaExhausted { .. })),
        "{err}"
    );
    assert_eq!(requests, 1, "insufficient_quota is never retried");
    assert_eq!(run.batches_failed, 1);
    let last = run.last_error.unwrap_or_default();
    assert!(
        last.contains("quota exhausted") && last.contains("backfill redrive"),
        "{last}"
    );
}

#[tokio::test]
async fn a_missing_column_names_the_migration() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let table = unique("no_vector").replace('-', "_");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, archive text, content text);
         GRANT SELECT, UPDATE ON {table} TO service_role;"
    ))
    .await
    .unwrap();
    let stack = stack.with("BACKFILL_TABLE", &table);
    let store = stack.store();
    let err = store
        .page(&stack.missing(), None, None, 10)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::MissingMigration { .. }), "{text}");
    assert!(
        text.contains("infra/migrations/incremental/0002_add_vector_search.sql"),
        "{text}"
    );
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_service_says_so() {
    let stack = Stack::load().with("SUPABASE_URL", "http://127.0.0.1:9");
    let store = stack.store();
    let err = store.coverage(&stack.spec(), None).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("SUPABASE_URL"), "{err}");
}

#[tokio::test]
async fn the_anon_key_can_neither_read_status_nor_call_rpcs() {
    let stack = Stack::load();
    let base = format!("{}/rest/v1", stack.var("SUPABASE_URL"));
    let anon = stack.var("SUPABASE_ANON_KEY");
    let publishable = stack.var("SUPABASE_PUBLISHABLE_KEY");
    // The legacy anon JWT (sent as apikey and bearer, as the old clients do)
    // and the publishable key (apikey only) both reach the database as anon.
    let callers = [
        ("legacy anon key", anon.as_str(), Some(anon.as_str())),
        ("publishable key", publishable.as_str(), None),
    ];
    let http = reqwest::Client::new();
    // A row in each table, so an empty answer means hidden, not absent (dated
    // long ago, so no `backfill status` of another test takes it for the latest).
    let pg = stack.pg().await;
    let hidden = uuid::Uuid::new_v4();
    pg.batch_execute(&format!(
        "INSERT INTO backfill_runs (id, params, price_per_million_tokens, created_at) VALUES ('{hidden}', '{{}}', 0.02, '2000-01-01');
         INSERT INTO backfill_batches (run_id, seq, ids, first_id, last_id) VALUES ('{hidden}', 0, '{{1}}', 1, 1);"
    ))
    .await
    .unwrap();
    for (who, apikey, bearer) in callers {
        for table in ["backfill_runs", "backfill_batches"] {
            let mut req = http
                .get(format!("{base}/{table}?select=*&limit=1"))
                .header("apikey", apikey);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                status == 401 || status == 403 || body.trim() == "[]",
                "{who} read {table}: {status} {body}"
            );
            assert!(status != 200 || body.trim() == "[]");
        }
    }
    pg.batch_execute(&format!("DELETE FROM backfill_runs WHERE id = '{hidden}'"))
        .await
        .unwrap();
    // Each function with the arguments it requires as the database has it now
    // (migrations change signatures), so postrust finds it and the call gets
    // as far as the privilege check, with values of the right types (it refuses
    // before it uses them).
    let run = uuid::Uuid::new_v4();
    let target = serde_json::json!({"schema":"public","table":"lovdata_documents","id":"id","content":"content","archive":"archive","embedding":"embedding"});
    let mut calls = Vec::new();
    for function in [
        "backfill_run_status",
        "backfill_create_run",
        "backfill_page_documents",
        "backfill_complete_batch",
        "backfill_coverage",
    ] {
        let required = pg
            .query(
                "WITH p AS (SELECT * FROM pg_proc WHERE proname = $1 AND pronamespace = 'public'::regnamespace ORDER BY oid DESC LIMIT 1)
                 SELECT a.name, format_type((string_to_array(p.proargtypes::text, ' ')::oid[])[a.ord], NULL)
                 FROM p CROSS JOIN LATERAL unnest(coalesce(p.proargnames, '{}')) WITH ORDINALITY AS a(name, ord)
                 WHERE a.ord <= p.pronargs - p.pronargdefaults ORDER BY a.ord",
                &[&function],
            )
            .await
            .unwrap();
        let args: serde_json::Map<String, serde_json::Value> = required
            .iter()
            .map(|r| {
                let (name, kind): (String, String) = (r.get(0), r.get(1));
                let value = match (name.as_str(), kind.as_str()) {
                    ("p_target", _) => target.clone(),
                    (_, "uuid") => serde_json::json!(run),
                    (_, "jsonb" | "json") => serde_json::json!([]),
                    (_, "integer" | "bigint" | "smallint" | "numeric") => serde_json::json!(1),
                    (_, "boolean") => serde_json::json!(false),
                    (_, k) if k.ends_with("[]") => serde_json::json!([1]),
                    _ => serde_json::json!("x"),
                };
                (name, value)
            })
            .collect();
        calls.push((function, serde_json::Value::Object(args)));
    }
    for (who, apikey, bearer) in callers {
        for (function, args) in &calls {
            let mut req = http
                .post(format!("{base}/rpc/{function}"))
                .header("apikey", apikey)
                .json(args);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                status == 401 || status == 403,
                "{who} called {function}: {status} {body}"
            );
            assert!(body.contains("permission denied"), "{function}: {body}");
        }
    }
    // And the same call with an anon key through the client names the key:
    // the legacy one in SUPABASE_SERVICE_ROLE_KEY...
    let env_stack = stack
        .without("SUPABASE_SECRET_KEY")
        .with("SUPABASE_SERVICE_ROLE_KEY", &anon);
    let err = env_stack.store().run_status(None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"),
        "{err}"
    );
    // ...and the publishable one in SUPABASE_SECRET_KEY.
    let env_stack = stack.with("SUPABASE_SECRET_KEY", &publishable);
    let err = env_stack.store().run_status(None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("SUPABASE_SECRET_KEY"), "{err}");
}

//! The end-to-end path once per embedding provider, against the project's
//! embeddings server in each provider's URL shape and key header: OpenAI,
//! Azure OpenAI and a generic OpenAI-compatible server with its own limits.

mod common;

use common::{insert_docs, run_of, unique, vectors, Stack, Standin};
use embed_backfill::embedder::EmbedError;
use embed_backfill::queue::{Queue, Received};
use embed_backfill::runner::{self, ConsumeOptions, OnFailure};
use embed_backfill::store::RunState;
use embed_backfill::worker::WorkerError;
use std::time::Duration;

const TABLE: &str = "lovdata_documents";
const DOCS: usize = 20;

fn settings(provider: &str, standin: &Standin) -> Vec<(&'static str, String)> {
    match provider {
        "openai" => vec![
            ("OPENAI_BASE_URL", format!("{}/v1", standin.url)),
            ("OPENAI_API_KEY", standin.key.clone()),
        ],
        "azure" => vec![
            ("EMBEDDING_PROVIDER", "azure".into()),
            ("AZURE_OPENAI_ENDPOINT", standin.url.clone()),
            ("AZURE_OPENAI_API_KEY", standin.key.clone()),
            ("AZURE_OPENAI_DEPLOYMENT", "text-embedding-3-small".into()),
            ("OPENAI_API_VERSION", "2024-10-21".into()),
        ],
        _ => vec![
            ("EMBEDDING_PROVIDER", "compatible".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", standin.url)),
            ("OPENAI_API_KEY", standin.key.clone()),
            ("EMBEDDING_MAX_INPUTS", "8".into()),
            ("EMBEDDING_MAX_INPUT_TOKENS", "8191".into()),
            ("EMBEDDING_PRICE_PER_MILLION_TOKENS", "0.05".into()),
        ],
    }
}

/// Dispatches an archive and drains it through `provider`; the run and the
/// server's request count.
async fn backfill_through(provider: &str) {
    let base = Stack::load();
    let standin = Standin::spawn(&[]);
    let stack = settings(provider, &standin)
        .into_iter()
        .fold(base.without("OPENAI_API_KEY"), |s, (k, v)| s.with(k, &v));
    let pg = stack.pg().await;
    let archive = unique(provider);
    let texts: Vec<String> = (0..DOCS)
        .map(|i| format!("§ {i} {archive} Forskrift om {provider} og kommunale gebyrer."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 100).await;
    runner::consume(
        &stack.worker(),
        &queue,
        &ConsumeOptions {
            until_empty: true,
            concurrency: 1,
            batch_size: 10,
            wait: Duration::from_secs(1),
            message_timeout: Duration::from_secs(60),
            on_failure: OnFailure::Leave,
        },
    )
    .await
    .unwrap();
    let done = run_of(&stack.store(), run).await;
    assert_eq!(done.state, RunState::Completed, "{provider}: {done:?}");
    assert_eq!(done.documents_embedded, DOCS as u64, "{provider}");
    assert_eq!(done.params["provider"], provider);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = base.expected_vectors(&refs).await;
    let stored = vectors(&pg, TABLE, &ids).await;
    for (id, want) in ids.iter().zip(&expected) {
        assert_eq!(stored.get(id), Some(want), "{provider}: document {id}");
    }
    let requests = standin.stats().await["requests"].as_u64().unwrap();
    match provider {
        // Eight inputs a request, the configured limit: 20 documents, 3 requests.
        "compatible" => {
            assert_eq!(requests, 3);
            let cost = done.tokens_billed as f64 * 0.05 / 1e6;
            assert!((done.actual_cost_usd - cost).abs() < 1e-12, "{done:?}");
        }
        _ => assert_eq!(requests, 1, "{provider}"),
    }
}

#[tokio::test]
async fn openai() {
    backfill_through("openai").await;
}

#[tokio::test]
async fn azure_openai() {
    backfill_through("azure").await;
}

#[tokio::test]
async fn an_openai_compatible_server_with_its_own_limits() {
    backfill_through("compatible").await;
}

#[tokio::test]
async fn a_wrong_azure_key_names_its_variable() {
    let base = Stack::load();
    let standin = Standin::spawn(&[]);
    let stack = settings("azure", &standin)
        .into_iter()
        .fold(base.clone(), |s, (k, v)| s.with(k, &v))
        .with("AZURE_OPENAI_API_KEY", "not-the-key");
    let pg = stack.pg().await;
    let archive = unique("azure-key");
    let harbours = format!("§ 1 {archive} Lov om havner.");
    insert_docs(&pg, TABLE, &archive, &[Some(harbours.as_str())]).await;
    let (queue, _) = stack.dispatch_fresh(&archive, 10).await;
    let Received { message: msg, .. } = queue
        .receive(1, Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .expect("a message");
    let err = stack.worker().handle(&msg, None).await.unwrap_err();
    assert!(
        matches!(&err, WorkerError::Embed(EmbedError::InvalidKey { key_var, .. }) if *key_var == "AZURE_OPENAI_API_KEY"),
        "{err}"
    );
    assert!(!err.to_string().contains("not-the-key"), "{err}");
}

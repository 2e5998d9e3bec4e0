//! End-to-end behaviour of dispatch → SQS → worker → status, on the real stack.

mod common;

use common::{drain, insert_docs, run_of, sample_texts, unique, vectors, Stack, Standin};
use embed_backfill::dispatch::DispatchRequest;
use embed_backfill::handlers;
use embed_backfill::queue::{Queue, SqsQueue};
use embed_backfill::store::RunState;
use embed_backfill::tokens;
use std::time::Duration;

const TABLE: &str = "lovdata_documents";

async fn dispatch(
    stack: &Stack,
    queue: &SqsQueue,
    json: &str,
) -> embed_backfill::dispatch::DispatchSummary {
    let dispatcher = stack.dispatcher(queue);
    let options = DispatchRequest::from_json(json)
        .expect("event")
        .validate()
        .expect("options");
    dispatcher.dispatch(&options).await.expect("dispatch")
}

/// The vector each non-empty document must hold: the server's vector for its
/// text cut to 8191 tokens.
async fn assert_embedded_with_own_text(
    stack: &Stack,
    pg: &tokio_postgres::Client,
    ids: &[i64],
    texts: &[Option<String>],
) {
    let stored = vectors(pg, TABLE, ids).await;
    for (id, text) in ids.iter().zip(texts) {
        match text.as_deref().filter(|t| !tokens::is_blank(t)) {
            None => assert!(!stored.contains_key(id), "blank document {id} got a vector"),
            Some(t) => {
                let cut = tokens::truncate(t, tokens::MAX_INPUT_TOKENS);
                let expected = stack.expected_vector(&cut.text).await;
                assert_eq!(
                    stored.get(id),
                    Some(&expected),
                    "document {id} does not hold the vector of its own text"
                );
            }
        }
    }
}

#[tokio::test]
async fn archive_backfill_end_to_end() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("lover");
    let other = unique("forskrifter");
    let texts = sample_texts(45);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let other_ids = insert_docs(&pg, TABLE, &other, &refs[..10]).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;

    let summary = dispatch(
        &stack,
        &queue,
        &format!(r#"{{"archive": "{archive}", "batch_size": 7, "embedding_batch_size": 4}}"#),
    )
    .await;
    assert_eq!(summary.documents, 45);
    assert_eq!(summary.batches, 7);
    assert!(summary.estimated_tokens > 0 && summary.estimated_cost_usd > 0.0);
    let tally = drain(&stack, &queue).await;
    common::assert_all_handled(&tally, 7);

    assert_embedded_with_own_text(&stack, &pg, &ids, &texts).await;
    assert!(
        vectors(&pg, TABLE, &other_ids).await.is_empty(),
        "another archive was touched"
    );

    let blank = texts
        .iter()
        .filter(|t| t.as_deref().is_none_or(tokens::is_blank))
        .count() as u64;
    let store = stack.store();
    let run = run_of(&store, summary.run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.total_documents, 45);
    assert_eq!(run.documents_embedded, 45 - blank);
    assert_eq!(run.documents_skipped, blank);
    assert_eq!(run.documents_failed, 0);
    assert_eq!(
        (run.batches_done, run.batches_failed, run.total_batches),
        (7, 0, 7)
    );
    assert!(run.tokens_used > 0 && run.actual_cost_usd > 0.0);
    assert!(run.finished_at.is_some());

    let coverage = store.coverage(&stack.spec(), Some(&archive)).await.unwrap();
    assert_eq!(coverage.total, 45);
    assert_eq!(coverage.with_embeddings, 45 - blank);
    assert_eq!(coverage.empty_content, blank);
}

#[tokio::test]
async fn limit_and_resume_from_id_select_the_right_documents() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("limit");
    let texts: Vec<String> = (0..30)
        .map(|i| format!("§ {i} {archive} Kommunen skal behandle søknaden innen fire uker."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;

    let summary = dispatch(
        &stack,
        &queue,
        &format!(
            r#"{{"archive": "{archive}", "limit": 10, "resume_from_id": {}, "batch_size": 4}}"#,
            ids[4]
        ),
    )
    .await;
    assert_eq!((summary.documents, summary.batches), (10, 3));
    drain(&stack, &queue).await;
    let stored = vectors(&pg, TABLE, &ids).await;
    let mut got: Vec<i64> = stored.keys().copied().collect();
    got.sort();
    assert_eq!(got, ids[5..15].to_vec());
}

#[tokio::test]
async fn dry_run_counts_real_tokens_and_changes_nothing() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("dry");
    let texts = sample_texts(25);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let runs_before: i64 = pg
        .query_one("SELECT count(*) FROM backfill_runs", &[])
        .await
        .unwrap()
        .get(0);

    let summary = dispatch(
        &stack,
        &queue,
        &format!(r#"{{"archive": "{archive}", "dry_run": true, "batch_size": 10}}"#),
    )
    .await;
    let expected_tokens: u64 = texts
        .iter()
        .filter_map(|t| t.as_deref())
        .filter(|t| !tokens::is_blank(t))
        .map(|t| tokens::truncate(t, tokens::MAX_INPUT_TOKENS).tokens as u64)
        .sum();
    assert!(summary.dry_run && summary.run_id.is_none());
    assert_eq!((summary.documents, summary.batches), (25, 3));
    assert_eq!(summary.estimated_tokens, expected_tokens);
    assert!((summary.estimated_cost_usd - expected_tokens as f64 * 0.02 / 1e6).abs() < 1e-12);

    let runs_after: i64 = pg
        .query_one("SELECT count(*) FROM backfill_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert!(runs_after >= runs_before);
    let mine: i64 = pg
        .query_one(
            "SELECT count(*) FROM backfill_runs WHERE archive = $1",
            &[&archive],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine, 0, "a dry run created a run row");
    assert!(
        queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "a dry run queued messages"
    );
    assert!(vectors(&pg, TABLE, &ids).await.is_empty());
}

#[tokio::test]
async fn archive_names_with_reserved_characters_match_exactly() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let tag = unique("");
    let names = [
        format!("lover, forskrifter{tag}"),
        format!("arkiv (2024){tag}"),
        format!("sitat \"lov\" og 'forskrift'{tag}"),
        format!("gjeldende-lover.tar.bz2{tag}"),
        format!("med mellomrom og+pluss{tag}"),
        format!("særlige lovsamlinger æøå{tag}"),
        format!("kolon:semikolon;og*stjerne%prosent{tag}"),
    ];
    let mut all = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let law = format!("Lov om arkiv {n}{tag}");
        let regulation = format!("Forskrift om arkiv {n}{tag}");
        let ids = insert_docs(
            &pg,
            TABLE,
            name,
            &[Some(law.as_str()), Some(regulation.as_str())],
        )
        .await;
        all.push(ids);
    }
    // A near-miss that a sloppy filter (LIKE, trimmed, form-encoded) would match.
    let not_me = format!("Ikke meg{tag}");
    let decoy = insert_docs(
        &pg,
        TABLE,
        &format!("med mellomrom og pluss{tag}"),
        &[Some(not_me.as_str())],
    )
    .await;
    for (name, ids) in names.iter().zip(&all) {
        let (queue, _) = stack.fresh_queue(30, 5).await;
        let json = serde_json::json!({ "archive": name }).to_string();
        let summary = dispatch(&stack, &queue, &json).await;
        assert_eq!(summary.documents, 2, "archive {name:?}");
        drain(&stack, &queue).await;
        assert_eq!(vectors(&pg, TABLE, ids).await.len(), 2, "archive {name:?}");
    }
    assert!(vectors(&pg, TABLE, &decoy).await.is_empty());
}

#[tokio::test]
async fn a_message_delivered_twice_is_counted_once_and_paid_once() {
    let stack = Stack::load();
    let standin = Standin::spawn(&[]);
    let stack = stack
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let pg = stack.pg().await;
    let archive = unique("twice");
    let disputes = format!("Lov om tvister {archive}");
    let fees = format!("Forskrift om gebyr {archive}");
    let ids = insert_docs(
        &pg,
        TABLE,
        &archive,
        &[Some(disputes.as_str()), Some(""), Some(fees.as_str())],
    )
    .await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let summary = dispatch(&stack, &queue, &format!(r#"{{"archive": "{archive}"}}"#)).await;
    let received = queue.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(received.len(), 1);
    let msg = &received[0].message;

    let store = stack.store();
    let worker = stack.worker();
    let first = worker.handle(msg, None).await.unwrap();
    assert!(first.counted && !first.already_done);
    let after_first = run_of(&store, summary.run_id).await;
    let requests = standin.stats().await["requests"].as_u64().unwrap();
    assert_eq!(requests, 1);

    let mut again = msg.clone();
    again.receive_count = 2;
    let second = worker.handle(&again, None).await.unwrap();
    assert!(second.already_done && !second.counted);
    let after_second = run_of(&store, summary.run_id).await;
    assert_eq!(
        standin.stats().await["requests"].as_u64().unwrap(),
        requests,
        "a second API call was made"
    );
    assert_eq!(after_first.documents_embedded, 2);
    assert_eq!(after_first.documents_skipped, 1);
    assert_eq!(
        (
            after_second.documents_embedded,
            after_second.documents_skipped,
            after_second.batches_done,
            after_second.tokens_used
        ),
        (
            after_first.documents_embedded,
            after_first.documents_skipped,
            after_first.batches_done,
            after_first.tokens_used
        )
    );
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 2);
}

#[tokio::test]
async fn bad_messages_fail_alone_in_an_sqs_event() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("event");
    let harbours = format!("Lov om havner {archive}");
    insert_docs(&pg, TABLE, &archive, &[Some(harbours.as_str())]).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    dispatch(&stack, &queue, &format!(r#"{{"archive": "{archive}"}}"#)).await;
    let good = queue
        .receive(1, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0)
        .message;
    let unknown_run = format!(
        r#"{{"v":1,"run_id":"{}","batch":0,"first_id":1,"last_id":2}}"#,
        uuid::Uuid::new_v4()
    );
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(serde_json::json!({
        "Records": [
            {"messageId": "bad-json", "body": "this is not json", "attributes": {"ApproximateReceiveCount": "1"}},
            {"messageId": "good", "body": good.body, "attributes": {"ApproximateReceiveCount": "1"}},
            {"messageId": "unknown-run", "body": unknown_run, "attributes": {"ApproximateReceiveCount": "1"}},
            {"messageId": "unknown-field", "body": good.body.replace("\"v\":1", "\"v\":1,\"colour\":\"blue\""), "attributes": {}}
        ]
    }))
    .unwrap();
    let store = stack.store();
    let worker = stack.worker();
    let response = handlers::sqs_event(&worker, event, None).await.unwrap();
    let mut failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    failed.sort();
    assert_eq!(failed, vec!["bad-json", "unknown-field", "unknown-run"]);
    let c = store.coverage(&stack.spec(), Some(&archive)).await.unwrap();
    assert_eq!(c.with_embeddings, 1);
}

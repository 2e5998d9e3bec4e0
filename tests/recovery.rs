//! Recovery at scale, on the real stack: retried batches get real retries, a
//! dispatch stopped by a permanent error is finished by `--continue`, failed
//! documents are retried, one delivery at a time works a batch, and a
//! dispatcher page never outlives its deadline.

mod common;

use async_trait::async_trait;
use common::{drain, insert_texts, run_of, sha256_hex, unique, vectors, Gateway, Stack, Standin};
use embed_backfill::dispatch::{DispatchRequest, DispatchSummary};
use embed_backfill::handlers;
use embed_backfill::queue::{
    BatchMessage, IncomingMessage, Queue, QueueError, Received, Settle, SqsQueue,
};
use embed_backfill::redrive;
use embed_backfill::store::RunState;
use embed_backfill::store::StoreError;
use embed_backfill::worker::WorkerError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const TABLE: &str = "lovdata_documents";

fn texts(n: usize, tag: &str) -> Vec<String> {
    let tag = unique(tag);
    (0..n)
        .map(|i| format!("§ {i} {tag}: vedtaket kan påklages til departementet."))
        .collect()
}

async fn set_text(pg: &tokio_postgres::Client, id: i64, text: &str) {
    pg.execute(
        &format!("UPDATE {TABLE} SET content = $2 WHERE id = $1"),
        &[&id, &text],
    )
    .await
    .unwrap();
}

async fn batch_state(pg: &tokio_postgres::Client, run: embed_backfill::ids::RunId) -> String {
    pg.query_one(
        "SELECT state FROM backfill_batches WHERE run_id = $1::text::uuid ORDER BY seq LIMIT 1",
        &[&run.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// One message from `queue`, as the worker gets it.
async fn receive_one(queue: &SqsQueue) -> IncomingMessage {
    for _ in 0..20 {
        if let Some(Received { message: msg, .. }) = queue
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            return msg;
        }
    }
    panic!("no message arrived");
}

#[tokio::test]
async fn a_retried_batch_gets_real_retries_after_a_permanent_failure() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("retried");
    let mut docs = texts(3, "retried");
    docs[1] = format!("Kvoten er brukt opp {archive} [[fail:quota]]");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;
    drain(&stack, &queue).await;
    let status = stack.store();
    let failed = run_of(&status, run).await;
    assert_eq!(failed.state, RunState::CompletedWithErrors);
    assert_eq!((failed.batches_failed, failed.documents_failed), (1, 3));

    // The quota is topped up, but the first retry meets a passing server error.
    set_text(
        &pg,
        ids[1],
        &format!("Serveren svikter en gang {archive} [[fail:500]]"),
    )
    .await;
    let (again, _) = stack.fresh_queue(1, 5).await;
    assert_eq!(
        redrive::retry_failed(status.as_ref(), &again, run, false)
            .await
            .unwrap(),
        1
    );
    let reopened = run_of(&status, run).await;
    assert_eq!(reopened.state, RunState::Running, "the run is open again");
    assert_eq!((reopened.batches_failed, reopened.documents_failed), (0, 0));
    let worker = stack.worker();
    let first = receive_one(&again).await;
    assert_eq!(first.receive_count, 1);
    let soon = Some(Instant::now() + Duration::from_secs(4));
    let err = worker.handle(&first, soon).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(batch_state(&pg, run).await, "retrying");

    // SQS delivers the same message again: a retry, not a walk to the DLQ.
    set_text(&pg, ids[1], &docs[0].replace("§ 0", "§ 1")).await;
    let second = receive_one(&again).await;
    assert_eq!(second.receive_count, 2);
    let report = worker.handle(&second, None).await.unwrap();
    assert!(report.counted);
    let done = run_of(&status, run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.documents_failed,
            done.batches_done,
            done.batches_failed
        ),
        (3, 0, 1, 0)
    );
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 3);
}

#[tokio::test]
async fn a_failed_batch_on_its_own_redelivery_stays_failed_without_calling_the_api() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("nocall");
    let mut docs = texts(2, "nocall");
    docs[0] = format!("Tom kvote {archive} [[fail:quota]]");
    insert_texts(&pg, &archive, &docs).await;
    let standin = Standin::spawn(&[]);
    let stack = stack
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;
    let worker = stack.worker();
    let mut first = receive_one(&queue).await;
    worker.handle(&first, None).await.unwrap_err();
    assert_eq!(batch_state(&pg, run).await, "failed");
    let requests = standin.stats().await["requests"].as_u64().unwrap();
    first.receive_count = 2;
    let err = worker.handle(&first, None).await.unwrap_err();
    assert!(matches!(err, WorkerError::FailedBefore(..)), "{err}");
    assert_eq!(
        standin.stats().await["requests"].as_u64().unwrap(),
        requests
    );
}

/// A queue that revokes the project's keys at the gateway once its first
/// page of messages is out, as a key rotated in the middle of a dispatch.
struct RevokingQueue<'a> {
    inner: SqsQueue,
    gateway: &'a Gateway,
    revoked: AtomicBool,
}

#[async_trait]
impl Queue for RevokingQueue<'_> {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        self.inner.send(messages).await?;
        if !self.revoked.swap(true, Ordering::SeqCst) {
            self.gateway
                .faults(serde_json::json!({"refuse_keys": true}))
                .await;
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        self.inner.receive(max, wait).await
    }

    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        self.inner.settle(settled).await
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        self.inner.visibility_timeout().await
    }
}

#[tokio::test]
async fn a_dispatch_stopped_by_a_revoked_key_is_finished_by_continue() {
    let base = Stack::load();
    let gateway = Gateway::spawn(&base, &base.var("STACK_POSTREST_URL"), 1000);
    let stack = base.with("SUPABASE_URL", &gateway.url());
    let pg = stack.pg().await;
    let archive = unique("revoked");
    let docs = texts(35, "revoked");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (sqs, _) = stack.fresh_queue(30, 5).await;
    let queue = std::sync::Arc::new(RevokingQueue {
        inner: sqs.clone(),
        gateway: &gateway,
        revoked: AtomicBool::new(false),
    });
    let dispatcher =
        embed_backfill::setup::dispatcher(&stack.env(), &stack.store(), queue).unwrap();
    let options =
        DispatchRequest::from_json(&format!(r#"{{"archive": "{archive}", "batch_size": 1}}"#))
            .unwrap()
            .validate()
            .unwrap();
    let run = embed_backfill::ids::RunId::random();
    let err = dispatcher
        .dispatch_run(run, &options, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            embed_backfill::dispatch::DispatchError::Store(StoreError::Unauthorized { .. })
        ),
        "{err}"
    );
    // The run waits, resumable, with its first page sent but not confirmed.
    let row = pg
        .query_one(
            "SELECT state, total_batches FROM backfill_runs WHERE id = $1::text::uuid",
            &[&run.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("dispatching".into(), 10)
    );

    let states: Vec<String> = pg
        .query(
            "SELECT state FROM backfill_batches WHERE run_id = $1::text::uuid",
            &[&run.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(states.iter().all(|s| s == "pending"), "{states:?}");
    gateway
        .faults(serde_json::json!({"refuse_keys": false}))
        .await;
    let summary: DispatchSummary = stack
        .dispatcher(&sqs)
        .continue_run(run, None)
        .await
        .unwrap();
    assert!(summary.complete);
    assert_eq!(
        (summary.documents, summary.batches, summary.resent_batches),
        (35, 35, 10)
    );
    // The first page's batches are on the queue twice now: a copy that
    // meets the other's lease comes back later, and counts nothing.
    drain(&stack, &sqs).await;
    let done = run_of(&stack.store(), run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.batches_done,
            done.batches_failed
        ),
        (35, 35, 0)
    );
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 35);
}

#[tokio::test]
async fn retry_failed_brings_back_a_document_that_failed_alone() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("alone");
    let mut docs = texts(5, "alone");
    let good = docs[2].clone();
    docs[2] = format!("Ødelagt dokument {archive} [[fail:400]]");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;
    drain(&stack, &queue).await;
    let status = stack.store();
    let first = run_of(&status, run).await;
    assert_eq!(first.state, RunState::CompletedWithErrors);
    assert_eq!((first.documents_embedded, first.documents_failed), (4, 1));
    assert_eq!(first.failed_documents.len(), 1);

    set_text(&pg, ids[2], &good).await;
    let (again, _) = stack.fresh_queue(30, 5).await;
    assert_eq!(
        redrive::retry_failed(status.as_ref(), &again, run, false)
            .await
            .unwrap(),
        1
    );
    drain(&stack, &again).await;
    let done = run_of(&status, run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.documents_failed,
            done.documents_skipped,
            done.batches_done,
            done.batches_failed
        ),
        (5, 0, 0, 1, 0)
    );
    assert!(done.failed_documents.is_empty());
    assert_eq!(done.tokens_used, done.tokens_billed);
    let stored = vectors(&pg, TABLE, &ids).await;
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[&ids[2]], stack.expected_vector(&good).await);
}

#[tokio::test]
async fn two_deliveries_of_one_batch_at_once_pay_one_api_call() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("twice");
    let docs = texts(4, "twice");
    insert_texts(&pg, &archive, &docs).await;
    let standin = Standin::spawn(&["--latency-ms", "1500"]);
    let stack = stack
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;
    let msg = receive_one(&queue).await;
    // The same batch on a second message, as `retry-failed --unfinished` over
    // a live backlog or a duplicated invocation sends it.
    let twin = IncomingMessage {
        message_id: Some("twin".into()),
        ..msg.clone()
    };
    let worker = stack.worker();
    let (a, b) = tokio::join!(worker.handle(&msg, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.handle(&twin, None).await
    });
    let report = a.unwrap();
    assert!(report.counted);
    let err = b.unwrap_err();
    assert!(matches!(err, WorkerError::Leased(..)), "{err}");
    assert!(err.is_transient(), "the twin comes back later");
    assert_eq!(standin.stats().await["requests"].as_u64().unwrap(), 1);
    let done = run_of(&stack.store(), run).await;
    let tokens: u64 = docs
        .iter()
        .map(|t| embed_backfill::tokens::count(t) as u64)
        .sum();
    assert_eq!((done.tokens_used, done.tokens_billed), (tokens, tokens));
    assert_eq!(done.documents_embedded, 4);
    // When the twin comes back, the batch has ended: skipped, nothing counted.
    let later = worker.handle(&twin, None).await.unwrap();
    assert!(later.already_done && !later.counted);
    assert_eq!(standin.stats().await["requests"].as_u64().unwrap(), 1);
}

#[tokio::test]
async fn a_dispatch_on_a_slow_database_is_finished_by_continuations() {
    let base = Stack::load();
    let gateway = Gateway::spawn(&base, &base.var("STACK_POSTREST_URL"), 1000);
    let stack = base.with("SUPABASE_URL", &gateway.url());
    let pg = stack.pg().await;
    let archive = unique("slowdb");
    let docs = texts(60, "slowdb");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let dispatcher = stack.dispatcher(&queue);
    // Every answer of the database API takes 400 ms: the first invocation's
    // page cannot finish within its 2 s.
    gateway.faults(serde_json::json!({"latency_ms": 400})).await;
    let event = serde_json::json!({"archive": archive, "batch_size": 5});
    let mut answer = handlers::dispatch_event(
        &dispatcher,
        event,
        Some(Instant::now() + Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert!(!answer.summary.complete, "the deadline cut the first page");
    let run = answer.summary.run_id.unwrap();
    let mut hops = 0;
    while let Some(next) = answer.continuation.clone() {
        hops += 1;
        assert!(hops < 20, "no progress after {hops} continuations");
        answer = handlers::dispatch_event(
            &dispatcher,
            serde_json::to_value(&next).unwrap(),
            Some(Instant::now() + Duration::from_secs(6)),
        )
        .await
        .unwrap();
    }
    assert!(hops >= 2, "{hops} continuations");
    assert_eq!((answer.summary.documents, answer.summary.batches), (60, 12));
    gateway.faults(serde_json::json!({"latency_ms": 0})).await;
    drain(&stack, &queue).await;
    let done = run_of(&stack.store(), run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!((done.documents_embedded, done.batches_done), (60, 12));
    let states: Vec<String> = pg
        .query(
            "SELECT state FROM backfill_batches WHERE run_id = $1::text::uuid",
            &[&run.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(states.iter().all(|s| s == "done"), "{states:?}");
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 60);
}

#[tokio::test]
async fn vectors_written_by_an_interrupted_delivery_count_once() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("chunks");
    let docs = texts(250, "chunks");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 250).await;
    // A delivery wrote its first chunk of 100 vectors, then died.
    let refs: Vec<&str> = docs[..100].iter().map(String::as_str).collect();
    let expected = stack.expected_vectors(&refs).await;
    let hashes: Vec<String> = refs.iter().map(|t| sha256_hex(t)).collect();
    let rows: Vec<embed_backfill::store::VectorRow<'_>> = ids[..100]
        .iter()
        .zip(&expected)
        .zip(&hashes)
        .map(|((id, v), sha256)| embed_backfill::store::VectorRow {
            id: embed_backfill::ids::DocumentId(*id),
            embedding: v,
            sha256,
            chunks: 1,
            tokens: 1,
            source: embed_backfill::store::VectorSource::Api,
        })
        .collect();
    let status = stack.store();
    let seq = embed_backfill::ids::BatchSeq(0);
    assert_eq!(status.write_vectors(run, seq, &rows).await.unwrap(), 100);
    assert_eq!(
        status.write_vectors(run, seq, &rows).await.unwrap(),
        0,
        "a repeat writes nothing"
    );
    // The next delivery embeds the other 150 in chunks and counts all 250 once.
    let tally = drain(&stack, &queue).await;
    assert_eq!(tally.documents_embedded, 250);
    let done = run_of(&status, run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.documents_skipped,
            done.batches_done
        ),
        (250, 0, 1)
    );
    let all: Vec<&str> = docs.iter().map(String::as_str).collect();
    let want = stack.expected_vectors(&all).await;
    let stored = vectors(&pg, TABLE, &ids).await;
    for (id, v) in ids.iter().zip(&want) {
        assert_eq!(stored.get(id), Some(v), "document {id}");
    }
}

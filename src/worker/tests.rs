//! The worker's logic against [`MemoryStore`] and the project's embeddings
//! server: bisection, redelivery, leases, deadlines and bounded fetches. The
//! integration tests run the same paths against the real stack.

use super::*;
use crate::store::{MemoryStore, RunStatus};
use crate::testkit::{self, Standin};
use devstack::standin;

const ARCHIVE: &str = "unit";

fn text(i: usize) -> String {
    format!("Paragraf {i}: kommunen skal behandle søknaden innen fire uker.")
}

async fn status(store: &MemoryStore, run: RunId) -> RunStatus {
    store.run_status(Some(run)).await.unwrap().unwrap()
}

fn again(msg: &IncomingMessage, receive_count: u32) -> IncomingMessage {
    IncomingMessage {
        receive_count,
        ..msg.clone()
    }
}

#[tokio::test]
async fn a_rejected_input_fails_its_document_alone() {
    let server = Standin::start(standin::Config::default()).await;
    let texts: Vec<String> = (1..=5)
        .map(|i| {
            if i == 3 {
                format!("{} [[fail:400]]", text(i))
            } else {
                text(i)
            }
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let store = testkit::store_with(ARCHIVE, &refs);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let report = server
        .worker(&store, 5)
        .handle(&messages[0], None)
        .await
        .unwrap();

    assert_eq!((report.embedded, report.failed), (4, 1));
    // One request for the five, then halves down to the one input at fault.
    assert_eq!(report.requests, 5);
    let run = status(&store, run).await;
    assert_eq!((run.documents_embedded, run.documents_failed), (4, 1));
    assert_eq!(run.failed_documents.len(), 1);
    assert_eq!(run.failed_documents[0].id, DocumentId(3));
    assert_eq!(store.embedding_of(DocumentId(3)), None);
    for (i, t) in texts.iter().enumerate().filter(|(i, _)| *i != 2) {
        let id = DocumentId(i as i64 + 1);
        assert_eq!(store.embedding_of(id), Some(testkit::vector_of(t)), "{id}");
    }
}

#[tokio::test]
async fn a_redelivery_counts_once_and_calls_nothing() {
    let server = Standin::start(standin::Config::default()).await;
    let texts: Vec<String> = (1..=4).map(text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let store = testkit::store_with(ARCHIVE, &refs);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let worker = server.worker(&store, 5);

    let first = worker.handle(&messages[0], None).await.unwrap();
    assert!(first.counted);
    let calls = server.requests().await;
    let second = worker.handle(&again(&messages[0], 2), None).await.unwrap();
    assert!(second.already_done && !second.counted);
    assert_eq!(server.requests().await, calls);
    let run = status(&store, run).await;
    assert_eq!((run.batches_done, run.documents_embedded), (1, 4));
    assert_eq!(run.state, crate::store::RunState::Completed);
}

#[tokio::test]
async fn metrics_count_a_batch_once_with_every_request_it_made() {
    let server = Standin::start(standin::Config::default()).await;
    let texts: Vec<String> = (1..=5)
        .map(|i| match i {
            3 => format!("{} [[fail:400]]", text(i)),
            _ => text(i),
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let store = testkit::store_with(ARCHIVE, &refs);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let captured = testkit::Captured::default();
    let worker = server
        .worker(&store, 5)
        .with_metrics(captured.metrics("worker"));
    worker.handle(&messages[0], None).await.unwrap();
    worker.handle(&again(&messages[0], 2), None).await.unwrap();

    let records = captured.records();
    assert_eq!(records.len(), 2, "one record per delivery");
    let (first, again) = (&records[0], &records[1]);
    let status = status(&store, run).await;
    assert_eq!(first["Run"], run.to_string());
    assert_eq!(first["DocumentsEmbedded"], status.documents_embedded);
    assert_eq!(first["DocumentsFailed"], status.documents_failed);
    assert_eq!(first["Tokens"], status.tokens_billed);
    assert_eq!(first["BatchesDone"], 1);
    // The whole group, its halves, then the quarters down to the bad input:
    // five requests, each answered, four of them 400s.
    assert_eq!(first["ApiRequests"], 5);
    assert_eq!(
        (
            first["ApiThrottled"].as_u64(),
            first["ApiServerErrors"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(first["ApiLatency"].as_f64().unwrap() > 0.0, "{first}");
    // The redelivery found the batch done: it counts nothing and asks nothing.
    for name in [
        "DocumentsEmbedded",
        "DocumentsFailed",
        "Tokens",
        "BatchesDone",
        "ApiRequests",
    ] {
        assert_eq!(again[name], 0, "{name}: {again}");
    }
    assert!(again.get("ApiLatency").is_none(), "{again}");
}

#[tokio::test]
async fn a_delivery_inside_anothers_lease_backs_off_and_records_nothing() {
    let server = Standin::start(standin::Config::default()).await;
    let store = testkit::store_with(ARCHIVE, &[&text(1), &text(2)]);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let seq = BatchSeq(0);
    // Another delivery began and holds the batch.
    store
        .begin_batch(run, seq, 1, Duration::from_secs(600))
        .await
        .unwrap();
    let worker = server.worker(&store, 5);

    let err = worker
        .handle(&again(&messages[0], 2), None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::Leased(..)), "{err}");
    assert!(err.is_transient());
    let batch = store.batch(run, seq).unwrap();
    assert_eq!((batch.state, batch.attempts), (BatchState::Running, 1));
    assert_eq!(batch.error, None);
    assert_eq!(server.requests().await, 0);

    // Once the holder's lease has run out, the next delivery takes the batch.
    store.expire_lease(run, seq);
    let report = worker.handle(&again(&messages[0], 3), None).await.unwrap();
    assert!(report.counted);
    assert_eq!(store.batch(run, seq).unwrap().attempts, 2);
}

#[tokio::test]
async fn a_batch_cut_off_by_the_deadline_is_left_to_redelivery() {
    let server = Standin::start(standin::Config {
        latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let store = testkit::store_with(ARCHIVE, &[&text(1), &text(2)]);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let worker = server.worker(&store, 5);

    let deadline = Instant::now() + Duration::from_secs(1);
    let err = worker
        .handle(&messages[0], Some(deadline))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::OutOfTime), "{err}");
    assert!(Instant::now() < deadline, "answered after the deadline");
    let batch = store.batch(run, BatchSeq(0)).unwrap();
    assert_eq!(batch.state, BatchState::Retrying);
    assert!(
        batch.leased_until.is_none(),
        "the lease outlived the delivery"
    );
    assert_eq!(status(&store, run).await.batches_failed, 0);

    let report = worker.handle(&again(&messages[0], 2), None).await.unwrap();
    assert_eq!(report.embedded, 2);
}

#[tokio::test]
async fn the_last_receive_fails_the_batch_and_only_a_fresh_message_retries_it() {
    let server = Standin::start(standin::Config {
        latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let store = testkit::store_with(ARCHIVE, &[&text(1)]);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 10)).await;
    let worker = server.worker(&store, 3);
    let deadline = || Some(Instant::now() + Duration::from_secs(1));

    // Cut off on its last receive: failed for good, counted once.
    let err = worker
        .handle(&again(&messages[0], 3), deadline())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::OutOfTime), "{err}");
    assert_eq!(
        store.batch(run, BatchSeq(0)).unwrap().state,
        BatchState::Failed
    );
    assert_eq!(status(&store, run).await.batches_failed, 1);

    // SQS bringing the same message back only walks it to the dead-letter queue.
    let calls = server.requests().await;
    let err = worker
        .handle(&again(&messages[0], 4), None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::FailedBefore(..)), "{err}");
    assert_eq!(server.requests().await, calls);

    // A redriven message is a fresh one: the batch is worked and counted once.
    let report = worker.handle(&again(&messages[0], 1), None).await.unwrap();
    assert!(report.counted);
    let run = status(&store, run).await;
    assert_eq!((run.batches_failed, run.batches_done), (0, 1));
    assert_eq!(run.documents_embedded, 1);
}

#[tokio::test]
async fn large_batches_come_in_bounded_fetches_and_go_out_in_chunks() {
    let server = Standin::start(standin::Config::default()).await;
    let texts: Vec<String> = (1..=250).map(text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let store = MemoryStore::new().with_fetch_budget(1000);
    testkit::add_texts(&store, ARCHIVE, 1, &refs);
    let store = Arc::new(store);
    let (run, messages) = testkit::dispatch(&store, &testkit::options(ARCHIVE, 250)).await;
    // A vector made elsewhere meanwhile is kept, and its row is skipped.
    store.set_embedding(DocumentId(7), Some(vec![1.0]));

    let report = server
        .worker(&store, 5)
        .handle(&messages[0], None)
        .await
        .unwrap();
    assert_eq!(
        (report.fetched, report.embedded, report.skipped),
        (249, 249, 1)
    );
    assert_eq!(store.embedding_of(DocumentId(7)), Some(vec![1.0]));
    for (i, t) in texts.iter().enumerate().filter(|(i, _)| *i != 6) {
        let id = DocumentId(i as i64 + 1);
        assert_eq!(store.embedding_of(id), Some(testkit::vector_of(t)), "{id}");
    }
    let run = status(&store, run).await;
    assert_eq!((run.documents_embedded, run.documents_skipped), (249, 1));
    assert_eq!(run.tokens_used, report.tokens);
}

#[tokio::test]
async fn a_message_of_an_unknown_run_fails_for_good_and_records_nothing() {
    let server = Standin::start(standin::Config::default()).await;
    let store = Arc::new(MemoryStore::new());
    let body = BatchMessage {
        v: crate::queue::MESSAGE_VERSION,
        run_id: RunId::random(),
        batch: BatchSeq(0),
        first_id: DocumentId(1),
        last_id: DocumentId(2),
    }
    .to_body();
    let msg = IncomingMessage {
        message_id: Some("m".into()),
        body,
        receive_count: 1,
    };
    let err = server
        .worker(&store, 5)
        .handle(&msg, None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::UnknownRun(_)), "{err}");
    assert!(!err.is_transient());
    let junk = IncomingMessage {
        body: "{}".into(),
        ..msg
    };
    let err = server
        .worker(&store, 5)
        .handle(&junk, None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::Message(_)), "{err}");
    assert_eq!(server.requests().await, 0);
}

//! The dispatcher's logic against [`MemoryStore`] and the memory queue:
//! deadlines and continuation, resending what was saved but never queued,
//! conflicting runs, dry runs, the limit and the resume point.

use super::*;
use crate::embedder::tokens;
use crate::ids::DocumentId;
use crate::queue::{BatchMessage, MemoryQueue, QueueError, Received, Settle};
use crate::store::MemoryStore;
use crate::testkit;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

const ARCHIVE: &str = "unit";

fn texts(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("§ {i}. Loven gjelder for hele landet, også Svalbard."))
        .collect()
}

fn store_of(n: usize) -> Arc<MemoryStore> {
    let texts = texts(n);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    testkit::store_with(ARCHIVE, &refs)
}

fn batches_of(messages: &[crate::queue::IncomingMessage]) -> Vec<BatchMessage> {
    messages
        .iter()
        .map(|m| BatchMessage::parse(&m.body).unwrap())
        .collect()
}

/// The memory queue, refusing every send while `refuse` is set.
#[derive(Default)]
struct Refusing {
    queue: MemoryQueue,
    refuse: AtomicBool,
}

#[async_trait]
impl Queue for Refusing {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(QueueError::Refused {
                count: messages.len(),
                reason: "AccessDenied".into(),
            });
        }
        self.queue.send(messages).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        self.queue.receive(max, wait).await
    }

    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        self.queue.settle(settled).await
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        self.queue.visibility_timeout().await
    }
}

#[tokio::test]
async fn a_dispatch_cut_by_its_deadline_continues_where_it_stopped() {
    let store = store_of(50);
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = testkit::dispatcher(&store, queue.clone());
    let opts = testkit::options(ARCHIVE, 2);

    // Too little time for a second page: one page of ten batches, then stop.
    let deadline = Instant::now() + PAGE_MARGIN / 2;
    let run = RunId::random();
    let first = dispatcher
        .dispatch_run(run, &opts, Some(deadline))
        .await
        .unwrap();
    assert!(!first.complete);
    assert_eq!(
        (first.documents, first.batches),
        (u64::from(2 * PAGE_BATCHES), u64::from(PAGE_BATCHES))
    );
    let status = store.run_status(Some(run)).await.unwrap().unwrap();
    assert_eq!(status.state, RunState::Dispatching);

    let done = dispatcher.continue_run(run, None).await.unwrap();
    assert!(done.complete);
    assert_eq!(
        (done.documents, done.batches, done.resent_batches),
        (50, 25, 0)
    );
    let sent = batches_of(&testkit::drain(&queue).await);
    let seqs: Vec<u32> = sent.iter().map(|m| m.batch.0).collect();
    assert_eq!(
        seqs,
        (0..25).collect::<Vec<_>>(),
        "each batch once, in order"
    );
    assert_eq!(sent[24].last_id, DocumentId(50));
    let status = store.run_status(Some(run)).await.unwrap().unwrap();
    assert_eq!(status.state, RunState::Running);
}

#[tokio::test]
async fn batches_saved_but_never_queued_are_sent_by_the_continuation() {
    let store = store_of(30);
    let queue = Arc::new(Refusing::default());
    queue.refuse.store(true, Ordering::Relaxed);
    let dispatcher = testkit::dispatcher(&store, queue.clone());
    let run = RunId::random();

    let err = dispatcher
        .dispatch_run(run, &testkit::options(ARCHIVE, 5), None)
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::Queue(_)), "{err}");
    // The run waits to be continued, and says how.
    let status = store.run_status(Some(run)).await.unwrap().unwrap();
    assert_eq!(status.state, RunState::Dispatching);
    let note = status.last_error.unwrap();
    assert!(note.contains(&format!("--continue {run}")), "{note}");
    assert_eq!(status.total_batches, 6);

    queue.refuse.store(false, Ordering::Relaxed);
    let done = dispatcher.continue_run(run, None).await.unwrap();
    assert!(done.complete);
    assert_eq!((done.batches, done.resent_batches), (6, 6));
    let sent = batches_of(&testkit::drain(&queue.queue).await);
    let seqs: BTreeSet<u32> = sent.iter().map(|m| m.batch.0).collect();
    assert_eq!(seqs, (0..6).collect(), "every batch, once");
    assert_eq!(sent.len(), 6);
}

#[tokio::test]
async fn an_active_run_blocks_another_over_the_same_archive_unless_forced() {
    let store = store_of(40);
    testkit::add_texts(&store, "other", 100, &["Forskrift om fiske."]);
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = testkit::dispatcher(&store, queue.clone());
    let opts = testkit::options(ARCHIVE, 2);
    let deadline = Instant::now() + PAGE_MARGIN / 2;
    let first = dispatcher
        .dispatch_run(RunId::random(), &opts, Some(deadline))
        .await
        .unwrap();
    assert!(!first.complete);

    let err = dispatcher.dispatch(&opts).await.unwrap_err();
    let DispatchError::ActiveRun(active) = &err else {
        panic!("{err}");
    };
    assert_eq!(Some(active.id), first.run_id);
    assert!(err.to_string().contains("force"), "{err}");

    let elsewhere = dispatcher
        .dispatch(&testkit::options("other", 2))
        .await
        .unwrap();
    assert_eq!(elsewhere.documents, 1);
    let forced = DispatchOptions {
        force: true,
        ..opts
    };
    assert!(dispatcher.dispatch(&forced).await.unwrap().complete);
}

#[tokio::test]
async fn a_dry_run_counts_every_token_and_records_nothing() {
    let texts = texts(23);
    let store = store_of(23);
    store.insert_document(DocumentId(24), Some(ARCHIVE), Some("  "));
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = testkit::dispatcher(&store, queue.clone());
    let opts = DispatchOptions {
        dry_run: true,
        ..testkit::options(ARCHIVE, 10)
    };
    let summary = dispatcher.dispatch(&opts).await.unwrap();
    let exact: u64 = texts.iter().map(|t| tokens::count(t) as u64).sum();
    assert_eq!(summary.estimated_tokens, exact);
    assert_eq!((summary.documents, summary.batches), (24, 3));
    assert!(summary.run_id.is_none());
    assert!(store.run_status(None).await.unwrap().is_none());
    assert!(testkit::drain(&queue).await.is_empty());
}

#[tokio::test]
async fn limit_and_resume_point_bound_the_run_and_survive_a_continuation() {
    let store = store_of(60);
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = testkit::dispatcher(&store, queue.clone());
    let opts = DispatchOptions {
        limit: Some(27),
        resume_from_id: Some(DocumentId(10)),
        ..testkit::options(ARCHIVE, 1)
    };
    let run = RunId::random();
    let deadline = Instant::now() + PAGE_MARGIN / 2;
    let first = dispatcher
        .dispatch_run(run, &opts, Some(deadline))
        .await
        .unwrap();
    assert_eq!(first.documents, 10);
    let done = dispatcher.continue_run(run, None).await.unwrap();
    assert_eq!((done.documents, done.batches), (27, 27));
    let sent = batches_of(&testkit::drain(&queue).await);
    assert_eq!(sent.first().unwrap().first_id, DocumentId(11));
    assert_eq!(sent.last().unwrap().last_id, DocumentId(37));
}

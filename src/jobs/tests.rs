//! The poller against `MemoryStore` and the project's embeddings server on a
//! loopback port (its Batch API too): no stack needed.

use super::collect::custom_id_of;
use super::lines::Lines;
use super::submit::custom_id;
use super::*;
use crate::ids::DocumentId;
use crate::store::{JobStore, MemoryStore, Mode};
use crate::testkit::{self, Standin};
use devstack::standin::Config;

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("§ {i} Lov om forvaltningen, kapittel {}.", i % 7))
        .collect()
}

/// A run of `n` texts dispatched in batch mode, 25 documents a batch.
async fn batch_run(n: usize, job_size: u32) -> (Arc<MemoryStore>, RunId, Vec<String>) {
    let texts = texts(n);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let store = testkit::store_with("a", &refs);
    let mut opts = testkit::options("a", 25);
    opts.mode = Mode::Batch;
    opts.job_size = job_size;
    let (run, messages) = testkit::dispatch(&store, &opts).await;
    assert!(messages.is_empty(), "batch mode queued messages");
    (store, run, texts)
}

fn poller(standin: &Standin, store: &Arc<MemoryStore>, queue_tokens: Option<u64>) -> Poller {
    let worker = standin.worker(store, 5);
    let store: Arc<dyn Store> = store.clone();
    Poller::new(store, worker, reqwest::Client::new(), queue_tokens).unwrap()
}

async fn stats(standin: &Standin) -> serde_json::Value {
    reqwest::get(format!("{}/stats", standin.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_goes_through_its_jobs_to_every_rows_own_vector() {
    let standin = Standin::start(Config::default()).await;
    let (store, run, texts) = batch_run(120, 50).await;
    let status = poller(&standin, &store, None)
        .drive(run, Duration::from_millis(10), |_, _| {})
        .await
        .unwrap();
    assert_eq!(status.state, crate::store::RunState::Completed);
    assert_eq!(status.documents_embedded, 120);
    for (i, text) in texts.iter().enumerate() {
        let id = DocumentId(i as i64 + 1);
        assert_eq!(store.embedding_of(id), Some(testkit::vector_of(text)));
    }
    // Five batches of 25 in jobs of at most 50 documents: three jobs.
    let jobs = store.run_jobs(run).await.unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.state == JobState::Done));
    let stats = stats(&standin).await;
    assert_eq!(
        (stats["batches"].as_u64(), stats["requests"].as_u64()),
        (Some(3), Some(0))
    );
}

#[tokio::test]
async fn a_job_without_room_in_the_queue_is_not_taken() {
    // Batches that never finish: the first job holds the queue.
    let standin = Standin::start(Config {
        batch_complete_after: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    let (store, run, _) = batch_run(100, 25).await;
    let jobs = store.run_jobs(run).await.unwrap();
    let one_job = jobs[0].estimated_tokens;
    let poller = poller(&standin, &store, Some(one_job + one_job / 2));
    let first = poller.tick(Some(run), None).await.unwrap();
    assert_eq!((first.submitted, first.waiting), (1, 3), "{first:?}");
    let second = poller.tick(Some(run), None).await.unwrap();
    assert_eq!((second.running, second.waiting), (1, 3), "{second:?}");
    // The waiting jobs were never taken: no attempt counted.
    let jobs = store.run_jobs(run).await.unwrap();
    let attempts: Vec<u32> = jobs.iter().map(|j| j.attempts).collect();
    assert_eq!(attempts, [1, 0, 0, 0]);
}

#[test]
fn custom_ids_name_their_batch_and_line() {
    let id = custom_id(BatchSeq(12), 3);
    assert_eq!(id, "12-3");
    assert_eq!(custom_id_of(&id), Some((BatchSeq(12), 3)));
    assert_eq!(custom_id_of("request-1"), None);
    assert_eq!(custom_id_of("12"), None);
}

#[tokio::test]
async fn lines_come_whole_across_chunks() {
    let mut lines = Lines::of_chunks(vec![b"{\"a\":", b"1}\n\n{\"b\"", b":2}\n  \n{\"c\":3}"]);
    let mut got = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        got.push(String::from_utf8(line).unwrap());
    }
    assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
}

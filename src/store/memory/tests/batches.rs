//! A batch counted once: leases, completions, failures and reopening.

use super::*;
use chrono::TimeDelta;

#[tokio::test]
async fn a_repeated_completion_is_counted_once_and_billed_twice() {
    let store = store(3);
    let run = dispatched(&store, &[&[1, 2, 3]]).await;
    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    let first = store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2, 3]), 30, &[])
        .await
        .unwrap();
    assert!(first.counted);
    assert_eq!((first.written, first.skipped), (3, 0));
    let again = store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2, 3]), 30, &[])
        .await
        .unwrap();
    assert!(!again.counted);
    assert_eq!(again.written, 0);
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::Completed);
    assert!(s.finished_at.is_some());
    assert_eq!((s.batches_done, s.documents_embedded), (1, 3));
    assert_eq!((s.tokens_used, s.tokens_billed), (30, 60));
    assert!((s.actual_cost_usd - 60.0 * 0.02 / 1e6).abs() < 1e-12);
    assert_eq!(store.embedding_of(d(2)), Some(V.to_vec()));
}

#[tokio::test]
async fn a_second_begin_within_the_lease_is_refused() {
    let store = store(2);
    let run = dispatched(&store, &[&[1, 2]]).await;
    let before = Utc::now();
    let first = store
        .begin_batch(run, BatchSeq(0), 1, Duration::from_millis(1))
        .await
        .unwrap();
    assert!(first.batch_found && !first.leased);
    assert_eq!(
        (first.state, first.attempts),
        (Some(BatchState::Running), 1)
    );
    assert_eq!(first.ids, vec![d(1), d(2)]);
    assert!(first.leased_until.unwrap() >= before + TimeDelta::seconds(1));

    let twin = store.begin_batch(run, BatchSeq(0), 2, LEASE).await.unwrap();
    assert!(twin.leased);
    assert_eq!(twin.attempts, 1, "a refused delivery is no attempt");
    assert_eq!(twin.leased_until, first.leased_until);

    store.expire_lease(run, BatchSeq(0));
    let later = store.begin_batch(run, BatchSeq(0), 2, LEASE).await.unwrap();
    assert!(!later.leased);
    assert_eq!(later.attempts, 2);
    assert!(later.leased_until.unwrap() > Utc::now() + TimeDelta::seconds(50));
}

#[tokio::test]
async fn a_failed_batch_is_reopened_only_by_a_fresh_message() {
    let store = store(3);
    let run = dispatched(&store, &[&[1, 2, 3]]).await;
    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    let fail = store
        .fail_batch(run, BatchSeq(0), "boom", true, 7)
        .await
        .unwrap();
    assert!(fail.counted);
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::CompletedWithErrors);
    assert_eq!(
        (s.batches_failed, s.documents_failed, s.tokens_billed),
        (1, 3, 7)
    );
    assert_eq!(s.last_error.as_deref(), Some("batch 0 (ids 1..3): boom"));
    assert_eq!(s.failed_batches.len(), 1);

    let redelivered = store.begin_batch(run, BatchSeq(0), 2, LEASE).await.unwrap();
    assert_eq!(redelivered.state, Some(BatchState::Failed));
    assert_eq!(redelivered.attempts, 1);
    assert_eq!(status(&store, run).await.batches_failed, 1);

    let fresh = store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    assert_eq!(
        (fresh.state, fresh.attempts),
        (Some(BatchState::Running), 2)
    );
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::Running);
    assert_eq!((s.batches_failed, s.documents_failed), (0, 0));
    assert!(s.finished_at.is_none());

    store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2, 3]), 9, &[])
        .await
        .unwrap();
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::Completed);
    assert_eq!(
        (s.batches_done, s.batches_failed, s.documents_embedded),
        (1, 0, 3)
    );
}

#[tokio::test]
async fn a_transient_failure_retries_and_only_the_first_permanent_one_counts() {
    let store = store(2);
    let run = dispatched(&store, &[&[1, 2]]).await;
    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    let transient = store
        .fail_batch(run, BatchSeq(0), "slow", false, 1)
        .await
        .unwrap();
    assert!(!transient.counted);
    let b = store.batch(run, BatchSeq(0)).unwrap();
    assert_eq!((b.state, b.leased_until), (BatchState::Retrying, None));
    assert_eq!(b.error.as_deref(), Some("slow"));
    let s = status(&store, run).await;
    assert_eq!((s.state, s.batches_failed), (RunState::Running, 0));
    assert_eq!(s.failed_batches[0].state, BatchState::Retrying);

    assert!(
        store
            .fail_batch(run, BatchSeq(0), "bad", true, 1)
            .await
            .unwrap()
            .counted
    );
    assert!(
        !store
            .fail_batch(run, BatchSeq(0), "bad", true, 1)
            .await
            .unwrap()
            .counted
    );
    let s = status(&store, run).await;
    assert_eq!(
        (s.batches_failed, s.documents_failed, s.tokens_billed),
        (1, 2, 3)
    );
}

#[tokio::test]
async fn reopened_batches_leave_the_counters_and_come_back_once() {
    let store = store(5);
    let run = dispatched(&store, &[&[1, 2, 3], &[4, 5]]).await;
    let failure = FailedDocument {
        id: d(3),
        reason: "too long".into(),
    };
    let done = store
        .complete_batch(
            run,
            BatchSeq(0),
            &vectors(&[1, 2]),
            20,
            std::slice::from_ref(&failure),
        )
        .await
        .unwrap();
    assert_eq!((done.written, done.skipped), (2, 0));
    store
        .fail_batch(run, BatchSeq(1), "x", true, 0)
        .await
        .unwrap();
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::CompletedWithErrors);
    assert_eq!((s.batches_done, s.batches_failed), (1, 1));
    assert_eq!((s.documents_embedded, s.documents_failed), (2, 3));
    assert_eq!(s.failed_documents, vec![failure]);

    let seqs = [BatchSeq(0), BatchSeq(1), BatchSeq(9)];
    assert_eq!(store.reopen_batches(run, &seqs).await.unwrap(), 2);
    assert_eq!(
        store.batch(run, BatchSeq(0)).unwrap().state,
        BatchState::Queued
    );
    assert_eq!(
        store.batch(run, BatchSeq(1)).unwrap().state,
        BatchState::Queued
    );
    let s = status(&store, run).await;
    assert_eq!((s.state, s.finished_at), (RunState::Running, None));
    assert_eq!(
        (s.batches_done, s.batches_failed, s.documents_failed),
        (0, 0, 0)
    );
    assert_eq!(s.documents_embedded, 2, "what was embedded stays counted");
    assert!(s.failed_documents.is_empty());

    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    let redo = store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2, 3]), 5, &[])
        .await
        .unwrap();
    assert_eq!((redo.counted, redo.written), (true, 1));
    assert_eq!(store.reopen_batches(run, &[BatchSeq(0)]).await.unwrap(), 0);
    let s = status(&store, run).await;
    assert_eq!((s.batches_done, s.documents_embedded), (1, 3));
}

#[tokio::test]
async fn vectors_from_chunks_count_once_and_never_overwrite() {
    let store = store(9);
    let run = dispatched(&store, &[&[1, 2, 3, 4], &[5, 6, 7]]).await;
    let (s0, s1) = (BatchSeq(0), BatchSeq(1));
    assert_eq!(
        store
            .write_vectors(run, s0, &vectors(&[1, 2, 9]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .write_vectors(run, s0, &vectors(&[1, 2]))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.embedding_of(d(9)), None, "not a row of the batch");
    store.set_embedding(d(4), Some(vec![9.0]));
    let done = store
        .complete_batch(run, s0, &vectors(&[3, 4]), 10, &[])
        .await
        .unwrap();
    assert_eq!((done.written, done.skipped), (3, 1));
    assert_eq!(store.embedding_of(d(4)), Some(vec![9.0]));

    assert_eq!(
        store.write_vectors(run, s1, &vectors(&[5])).await.unwrap(),
        1
    );
    store.fail_batch(run, s1, "gone", true, 0).await.unwrap();
    let s = status(&store, run).await;
    assert_eq!((s.documents_embedded, s.documents_skipped), (4, 1));
    assert_eq!(s.documents_failed, 2);
}

#[tokio::test]
async fn a_bad_vector_or_a_missing_batch_changes_nothing() {
    let store = store(2);
    let run = dispatched(&store, &[&[1, 2]]).await;
    let nan = [f32::NAN];
    let rows = [
        vector(1, "text 1"),
        VectorRow {
            embedding: &nan,
            ..vector(2, "text 2")
        },
    ];
    let err = store
        .complete_batch(run, BatchSeq(0), &rows, 5, &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_complete_batch", "22000"));
    assert_eq!(store.embedding_of(d(1)), None);
    assert_eq!(status(&store, run).await.tokens_billed, 0);
    let err = store
        .write_vectors(run, BatchSeq(4), &vectors(&[1]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_write_vectors", "P0002"));
}

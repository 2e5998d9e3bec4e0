//! A run's row: one active run per target, and a dispatch that records
//! its batches once.

use super::*;

#[tokio::test]
async fn create_run_refuses_an_overlapping_active_run_unless_forced() {
    let store = MemoryStore::new();
    let create = |run, archive, force| {
        let store = &store;
        async move {
            match store
                .create_run(run, &params(), archive, 0.02, force)
                .await
                .unwrap()
            {
                CreatedRun::Run(r) => Ok(r.id),
                CreatedRun::Conflict { conflict } => Err(conflict.id),
            }
        }
    };
    let (a, b, c, e) = (
        RunId::random(),
        RunId::random(),
        RunId::random(),
        RunId::random(),
    );
    assert_eq!(create(a, Some("a"), false).await, Ok(a));
    assert_eq!(create(b, Some("b"), false).await, Ok(b));
    assert_eq!(
        create(c, None, false).await,
        Err(b),
        "the latest active run"
    );
    assert_eq!(
        create(a, Some("a"), false).await,
        Ok(a),
        "a retried create finds its run"
    );
    let other = json!({ "target": { "table": "other" } });
    assert!(matches!(
        store
            .create_run(e, &other, None, 0.02, false)
            .await
            .unwrap(),
        CreatedRun::Run(_)
    ));
    assert_eq!(create(c, Some("a"), true).await, Ok(c));
    store.finish_dispatch(a).await.unwrap();
    assert_eq!(status(&store, a).await.state, RunState::Completed);
    let late = RunId::random();
    assert_eq!(create(late, Some("a"), false).await, Err(c));
    assert_eq!(
        store.run_status(None).await.unwrap().unwrap().id,
        c,
        "the latest created"
    );
    assert!(store.run_status(Some(late)).await.unwrap().is_none());
}

#[tokio::test]
async fn add_batches_records_a_page_once_and_only_while_dispatching() {
    let store = store(6);
    let run = RunId::random();
    let batch = |seq, ids: &[i64]| NewBatch {
        seq: BatchSeq(seq),
        ids: ids.iter().map(|&id| d(id)).collect(),
        estimated_tokens: 1_000_000,
    };
    let err = store
        .add_batches(run, &[batch(0, &[1])], d(1))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_add_batches", "P0002"));
    store
        .create_run(run, &params(), None, 0.02, false)
        .await
        .unwrap();
    let err = store
        .add_batches(run, &[batch(0, &[])], d(1))
        .await
        .unwrap_err();
    assert_eq!(code(&err).1, "23502");
    store
        .add_batches(run, &[batch(0, &[1, 2]), batch(1, &[3, 4])], d(4))
        .await
        .unwrap();
    let s = store
        .add_batches(run, &[batch(1, &[3, 4]), batch(2, &[5, 6])], d(3))
        .await
        .unwrap();
    assert_eq!((s.total_batches, s.total_documents, s.next_seq), (3, 6, 3));
    assert_eq!((s.cursor_id, s.estimated_tokens), (Some(d(4)), 3_000_000));
    assert!((s.estimated_cost_usd - 0.06).abs() < 1e-12);

    assert_eq!(
        store
            .mark_queued(run, &[BatchSeq(1), BatchSeq(1)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.mark_queued(run, &[BatchSeq(1)]).await.unwrap(), 0);
    let pending = [BatchState::Pending];
    let refs = store.batch_refs(run, &pending, None, 1).await.unwrap();
    assert_eq!(
        refs,
        vec![BatchRef {
            seq: BatchSeq(0),
            first_id: d(1),
            last_id: d(2)
        }]
    );
    let refs = store
        .batch_refs(run, &pending, Some(BatchSeq(0)), 5)
        .await
        .unwrap();
    assert_eq!(
        refs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![BatchSeq(2)]
    );

    let s = store.finish_dispatch(run).await.unwrap();
    assert_eq!(s.state, RunState::Running, "batches are still open");
    assert!(s.dispatched_at.is_some());
    let err = store
        .add_batches(run, &[batch(3, &[6])], d(6))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_add_batches", "55000"));
    let err = store.finish_dispatch(RunId::random()).await.unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }), "{err:?}");
}

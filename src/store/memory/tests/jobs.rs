//! Batch mode's jobs: filled in batch order under a document cap, handed to
//! the poller once each, and failed with their batches counted once.

use super::*;
use crate::store::{Job, JobState, JobUpdate};

/// A run that recorded and queued `batches` (seq 0, 1, ...), each estimated
/// at 10 tokens a document; its dispatch ended when `finished`.
async fn run_of(store: &MemoryStore, params: &Value, batches: &[&[i64]], finished: bool) -> RunId {
    let run = RunId::random();
    store
        .create_run(run, params, None, 0.02, true)
        .await
        .unwrap();
    let new: Vec<NewBatch> = batches
        .iter()
        .enumerate()
        .map(|(i, ids)| NewBatch {
            seq: BatchSeq(i as u32),
            ids: ids.iter().map(|&id| d(id)).collect(),
            estimated_tokens: 10 * ids.len() as u64,
        })
        .collect();
    let last = batches.iter().flat_map(|b| b.iter()).max().unwrap();
    store.add_batches(run, &new, d(*last)).await.unwrap();
    let seqs: Vec<BatchSeq> = new.iter().map(|b| b.seq).collect();
    store.mark_queued(run, &seqs).await.unwrap();
    if finished {
        store.finish_dispatch(run).await.unwrap();
    }
    run
}

fn seqs(seqs: &[u32]) -> Vec<BatchSeq> {
    seqs.iter().map(|&s| BatchSeq(s)).collect()
}

/// How many of `batches` `queue_in_jobs` placed.
async fn queue(
    store: &MemoryStore,
    run: RunId,
    batches: &[u32],
    max: u32,
    from: Option<u32>,
) -> u64 {
    let from = from.map(JobSeq);
    store
        .queue_in_jobs(run, &seqs(batches), max, from)
        .await
        .unwrap()
}

async fn update(store: &MemoryStore, run: RunId, job: u32, u: &JobUpdate) -> Job {
    store.update_job(run, JobSeq(job), u).await.unwrap()
}

/// Each job's state, documents and estimated tokens, in seq order.
async fn jobs(store: &MemoryStore, run: RunId) -> Vec<(JobState, u64, u64)> {
    let jobs = store.run_jobs(run).await.unwrap();
    assert!(jobs.windows(2).all(|w| w[0].seq < w[1].seq));
    jobs.iter()
        .map(|j| (j.state, j.documents, j.estimated_tokens))
        .collect()
}

/// The seqs of the job's batches that have not ended.
async fn held(store: &MemoryStore, run: RunId, job: u32) -> Vec<u32> {
    let batches = store.job_batches(run, JobSeq(job), None, 100).await;
    batches.unwrap().iter().map(|b| b.seq.0).collect()
}

/// The due jobs, and the model's jobs and tokens at the provider.
async fn due(store: &MemoryStore, max: u32) -> (Vec<(RunId, u32)>, u64, u64) {
    let due = store.jobs_due(MODEL, None, max).await.unwrap();
    let jobs = due.jobs.iter().map(|j| (j.run_id, j.seq.0)).collect();
    (jobs, due.queued_jobs, due.queued_tokens)
}

fn to(state: JobState) -> JobUpdate {
    JobUpdate {
        state: Some(state),
        ..JobUpdate::default()
    }
}

#[tokio::test]
async fn jobs_fill_in_order_under_the_cap_and_finish_dispatch_readies_the_last() {
    let store = store(17);
    let sizes: [&[i64]; 5] = [
        &[1, 2, 3],
        &[4, 5],
        &[6],
        &[7, 8, 9, 10],
        &[11, 12, 13, 14, 15, 16, 17],
    ];
    let run = run_of(&store, &params(), &sizes, false).await;
    let err = store.queue_in_jobs(run, &seqs(&[0]), 0, None).await;
    assert_eq!(code(&err.unwrap_err()), ("backfill_queue_in_jobs", "22023"));

    assert_eq!(queue(&store, run, &[0, 1], 5, None).await, 2);
    assert_eq!(
        queue(&store, run, &[0], 5, None).await,
        0,
        "a batch in a job that is not being collected stays"
    );
    assert_eq!(jobs(&store, run).await, [(JobState::Open, 5, 50)]);
    assert_eq!(queue(&store, run, &[4, 3, 2], 5, None).await, 3);
    assert_eq!(
        jobs(&store, run).await,
        [
            (JobState::Ready, 5, 50),
            (JobState::Ready, 5, 50),
            (JobState::Open, 7, 70),
        ],
        "in seq order; a batch over the cap alone in a job of its own"
    );
    assert_eq!(held(&store, run, 1).await, [2, 3]);
    assert_eq!(
        store.batch(run, BatchSeq(4)).unwrap().state,
        BatchState::Queued
    );

    store.finish_dispatch(run).await.unwrap();
    assert_eq!(jobs(&store, run).await[2].0, JobState::Ready);
}

#[tokio::test]
async fn a_collected_jobs_open_batches_move_to_a_new_job_and_the_others_stay() {
    let store = store(4);
    let run = run_of(&store, &params(), &[&[1], &[2], &[3, 4]], true).await;
    assert_eq!(queue(&store, run, &[0, 1, 2], 100, None).await, 3);
    assert_eq!(
        jobs(&store, run).await,
        [(JobState::Ready, 4, 40)],
        "ready at once: the dispatch has ended"
    );
    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    store
        .complete_batch(run, BatchSeq(0), &vectors(&[1]), 3, &[])
        .await
        .unwrap();
    store
        .fail_batch(run, BatchSeq(2), "line failed", false, 0)
        .await
        .unwrap();

    assert_eq!(queue(&store, run, &[2], 100, None).await, 0);
    assert_eq!(
        queue(&store, run, &[0, 1], 100, Some(0)).await,
        1,
        "a done batch is not placed again"
    );
    assert_eq!(held(&store, run, 0).await, [2]);
    assert_eq!(held(&store, run, 1).await, [1]);

    update(&store, run, 0, &to(JobState::Done)).await;
    assert_eq!(
        queue(&store, run, &[2], 100, None).await,
        1,
        "a retrying batch of a job that ended"
    );
    assert_eq!(
        store.batch(run, BatchSeq(2)).unwrap().state,
        BatchState::Queued
    );
    assert_eq!(
        jobs(&store, run).await,
        [
            (JobState::Done, 4, 40),
            (JobState::Ready, 1, 10),
            (JobState::Ready, 2, 20),
        ],
        "a job keeps its counts when batches leave it"
    );
}

#[tokio::test]
async fn due_jobs_come_submitted_first_then_by_run_and_seq_and_a_lease_hides_one() {
    let store = store(5);
    let a = run_of(&store, &params(), &[&[1], &[2], &[3]], true).await;
    let other = json!({ "target": Target::default(), "model": "other" });
    let b = run_of(&store, &other, &[&[4], &[5]], true).await;
    queue(&store, b, &[0, 1], 1, None).await;
    queue(&store, a, &[0, 1, 2], 1, None).await;
    update(&store, b, 1, &to(JobState::Submitted)).await;
    update(&store, a, 2, &to(JobState::Submitted)).await;

    let all = [(a, 2), (b, 1), (a, 0), (a, 1), (b, 0)];
    assert_eq!(
        due(&store, 10).await,
        (all.to_vec(), 1, 10),
        "only the model's queue"
    );
    assert_eq!(due(&store, 2).await.0, all[..2]);
    let first = store.begin_job(a, JobSeq(0), LEASE).await.unwrap();
    assert!(!first.leased && first.params.is_some());
    let job = first.job.unwrap();
    let since = job.submitting_since.unwrap();
    assert_eq!(job.attempts, 1);
    assert!(!due(&store, 10).await.0.contains(&(a, 0)));
    let twin = store.begin_job(a, JobSeq(0), LEASE).await.unwrap();
    assert!(twin.leased);
    assert_eq!(
        twin.job.unwrap().attempts,
        1,
        "a refused take is no attempt"
    );

    let seen = JobUpdate {
        provider_status: Some("validating".into()),
        ..JobUpdate::default()
    };
    update(&store, a, 0, &seen).await;
    assert!(
        !due(&store, 10).await.0.contains(&(a, 0)),
        "no state: still held"
    );
    store.expire_job_lease(a, JobSeq(0));
    assert_eq!(due(&store, 10).await.0, all);
    let again = store
        .begin_job(a, JobSeq(0), LEASE)
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!(again.attempts, 2);
    assert_eq!(
        again.submitting_since,
        Some(since),
        "the first attempt's start"
    );

    let watched = store
        .begin_job(a, JobSeq(2), LEASE)
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!((watched.attempts, watched.submitting_since), (0, None));
    assert_eq!(
        due(&store, 10).await.1,
        1,
        "a leased submitted job still holds the queue"
    );
    let none = store.begin_job(a, JobSeq(9), LEASE).await.unwrap();
    assert!(none.job.is_none() && none.params.is_none());
}

#[tokio::test]
async fn split_recounts_both_jobs_and_drops_the_moved_plans() {
    let store = store(6);
    let run = run_of(&store, &params(), &[&[1, 2], &[3], &[4, 5, 6]], true).await;
    queue(&store, run, &[0, 1, 2], 100, None).await;
    let plans: Vec<(BatchSeq, Value)> = (0..4)
        .map(|s| (BatchSeq(s), json!({ "lines": s })))
        .collect();
    assert_eq!(
        store.save_plans(run, JobSeq(0), &plans).await.unwrap(),
        3,
        "no batch 3"
    );

    assert_eq!(
        store.split_job(run, JobSeq(0), BatchSeq(1)).await.unwrap(),
        JobSeq(1)
    );
    assert_eq!(
        jobs(&store, run).await,
        [(JobState::Ready, 2, 20), (JobState::Ready, 4, 40)]
    );
    let kept = store.job_batches(run, JobSeq(0), None, 100).await.unwrap();
    assert_eq!(kept[0].plan, Some(json!({ "lines": 0 })));
    let moved = store.job_batches(run, JobSeq(1), None, 100).await.unwrap();
    assert_eq!(
        moved
            .iter()
            .map(|b| (b.seq.0, b.plan.clone()))
            .collect::<Vec<_>>(),
        [(1, None), (2, None)]
    );
    let page = store
        .job_batches(run, JobSeq(1), Some(BatchSeq(1)), 1)
        .await;
    assert_eq!(page.unwrap()[0].ids, [d(4), d(5), d(6)]);

    let err = store
        .split_job(RunId::random(), JobSeq(0), BatchSeq(0))
        .await;
    assert_eq!(code(&err.unwrap_err()), ("backfill_split_job", "23503"));
}

#[tokio::test]
async fn update_job_stamps_entries_and_going_back_to_ready_clears_the_submission() {
    let store = store(1);
    let run = run_of(&store, &params(), &[&[1]], true).await;
    queue(&store, run, &[0], 10, None).await;
    store.begin_job(run, JobSeq(0), LEASE).await.unwrap();
    let submitted = JobUpdate {
        state: Some(JobState::Submitted),
        input_file_id: Some(Some("file-1".into())),
        batch_id: Some("batch-1".into()),
        provider_status: Some("validating".into()),
        lines_total: Some(1),
        ..JobUpdate::default()
    };
    let job = update(&store, run, 0, &submitted).await;
    let at = job.submitted_at.unwrap();
    assert!(job.submitting_since.is_some());
    assert_eq!(due(&store, 10).await.0.len(), 1, "the lease ended");
    let job = update(&store, run, 0, &submitted).await;
    assert_eq!(job.submitted_at, Some(at), "stamped on entering only");

    let back = JobUpdate {
        state: Some(JobState::Ready),
        blocked_behind: Some(Some(3)),
        ..JobUpdate::default()
    };
    let job = update(&store, run, 0, &back).await;
    assert_eq!(
        (job.batch_id, job.submitting_since, job.submitted_at),
        (None, None, None)
    );
    assert_eq!(
        job.input_file_id.as_deref(),
        Some("file-1"),
        "the uploaded file is submitted again"
    );
    assert_eq!(job.provider_status.as_deref(), Some("validating"));
    assert_eq!((job.lines_total, job.blocked_behind), (1, Some(3)));
    let resubmitted = JobUpdate {
        state: Some(JobState::Submitted),
        batch_id: Some("batch-2".into()),
        blocked_behind: Some(None),
        ..JobUpdate::default()
    };
    let job = update(&store, run, 0, &resubmitted).await;
    assert!(job.submitted_at.is_some_and(|again| again >= at));
    assert_eq!(job.blocked_behind, None, "a JSON null clears it");

    let done = update(&store, run, 0, &to(JobState::Done)).await;
    let finished = done.finished_at.unwrap();
    let failed = update(&store, run, 0, &to(JobState::Failed)).await;
    assert_eq!(failed.finished_at, Some(finished));
    assert_eq!(failed.batch_id.as_deref(), Some("batch-2"));

    let err = store.update_job(run, JobSeq(1), &to(JobState::Done)).await;
    assert_eq!(code(&err.unwrap_err()), ("backfill_update_job", "P0002"));
}

#[tokio::test]
async fn fail_job_counts_each_open_batch_once_and_retry_takes_them_to_a_new_job() {
    let store = store(4);
    let run = run_of(&store, &params(), &[&[1, 2], &[3], &[4]], true).await;
    queue(&store, run, &[0, 1, 2], 100, None).await;
    store.begin_batch(run, BatchSeq(0), 1, LEASE).await.unwrap();
    store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2]), 6, &[])
        .await
        .unwrap();
    let err = store.fail_job(run, JobSeq(1), "refused").await.unwrap_err();
    assert_eq!(code(&err), ("backfill_fail_job", "P0002"));

    assert_eq!(store.fail_job(run, JobSeq(0), "refused").await.unwrap(), 2);
    assert_eq!(store.fail_job(run, JobSeq(0), "refused").await.unwrap(), 0);
    let s = status(&store, run).await;
    assert_eq!(s.state, RunState::CompletedWithErrors);
    assert_eq!(
        (s.batches_done, s.batches_failed, s.documents_failed),
        (1, 2, 2)
    );
    let b = store.batch(run, BatchSeq(1)).unwrap();
    assert_eq!(
        (b.state, b.error.as_deref()),
        (BatchState::Failed, Some("refused"))
    );
    let job = &store.run_jobs(run).await.unwrap()[0];
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Failed, Some("refused"))
    );
    assert!(job.finished_at.is_some());

    assert_eq!(store.reopen_batches(run, &seqs(&[1, 2])).await.unwrap(), 2);
    assert_eq!(queue(&store, run, &[1, 2], 100, None).await, 2);
    assert_eq!(
        jobs(&store, run).await,
        [(JobState::Failed, 4, 40), (JobState::Ready, 2, 20)]
    );
    let s = status(&store, run).await;
    assert_eq!((s.state, s.batches_failed), (RunState::Running, 0));
}

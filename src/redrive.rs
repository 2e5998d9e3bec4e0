//! Bringing failed work back: `backfill redrive` moves messages from the
//! dead-letter queue to the queue with receive/send/delete (which works on AWS
//! and on emulators without StartMessageMoveTask), and `backfill retry-failed`
//! queues a run's failed batches again from the status tables, even after the
//! dead-letter queue's messages have expired.

use crate::dispatch::RunParams;
use crate::ids::{BatchSeq, RunId};
use crate::queue::{BatchMessage, Queue, QueueError, SqsQueue};
use crate::store::{BatchState, Mode, Store, StoreError};
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RedriveReport {
    /// Messages sent back to the queue and deleted from the dead-letter queue.
    pub moved: u64,
    /// Messages of other runs, left where they are.
    pub skipped: u64,
    /// Bodies that are not batch messages: redriving them would only fail again.
    pub unreadable: u64,
}

/// How long a skipped message stays hidden, so one pass does not see it twice.
const SKIP_VISIBILITY: Duration = Duration::from_secs(60);

/// Moves messages from `dlq` to `queue` until the dead-letter queue answers
/// empty or `max` have moved. Each message is sent before it is deleted, so a
/// crash in between duplicates it, which the worker tolerates, and loses none.
pub async fn redrive(
    dlq: &SqsQueue,
    queue: &SqsQueue,
    run: Option<RunId>,
    max: Option<u64>,
) -> Result<RedriveReport, QueueError> {
    let mut report = RedriveReport::default();
    loop {
        let room = max.map_or(10, |m| m.saturating_sub(report.moved).min(10));
        if room == 0 {
            break;
        }
        let received = dlq
            .receive_hidden(room as usize, Duration::from_secs(1), Some(SKIP_VISIBILITY))
            .await?;
        if received.is_empty() {
            break;
        }
        let mut bodies = Vec::new();
        let mut receipts = Vec::new();
        for delivery in received {
            match BatchMessage::parse(&delivery.message.body) {
                Err(_) => report.unreadable += 1,
                Ok(m) if run.is_some_and(|r| r != m.run_id) => report.skipped += 1,
                Ok(_) => {
                    bodies.push(delivery.message.body);
                    receipts.push(delivery.receipt);
                }
            }
        }
        queue.send_raw(&bodies).await?;
        dlq.delete(&receipts).await?;
        report.moved += bodies.len() as u64;
        tracing::info!(moved = bodies.len(), total = report.moved, "redriven");
    }
    Ok(report)
}

#[derive(Debug, Error)]
pub enum RetryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("run {0} does not exist in backfill_runs")]
    UnknownRun(RunId),
}

/// Batches reopened and queued per round, so each call stays small.
const RETRY_CHUNK: usize = 1000;

/// Queues again every batch of `run` that ended failed, and every batch that
/// ended with failed documents (only those still without a vector are worked
/// again); with `unfinished`, also every batch that never ended. Each batch
/// is taken out of the run's counters first, so its deliveries get the full
/// retry budget and its documents count once, as embedded or as failed.
/// Returns how many batches were queued. A batch-mode run's batches go into
/// new jobs instead, except those of a job still at the provider.
pub async fn retry_failed<Q: Queue>(
    store: &dyn Store,
    queue: &Q,
    run: RunId,
    unfinished: bool,
) -> Result<u64, RetryError> {
    let status = store
        .run_status(Some(run))
        .await?
        .ok_or(RetryError::UnknownRun(run))?;
    let options = RunParams::read(&status.params).map(|p| p.options);
    let mut states = vec![BatchState::DoneWithFailures];
    if unfinished {
        states.extend(BatchState::UNFINISHED);
    } else {
        states.push(BatchState::Failed);
    }
    // A batch still in flight may be queued twice this way; it is counted once.
    let batches = store.batches_in(run, &states).await?;
    let mut queued = 0;
    for chunk in batches.chunks(RETRY_CHUNK) {
        let seqs: Vec<BatchSeq> = chunk.iter().map(|b| b.seq).collect();
        store.reopen_batches(run, &seqs).await?;
        match &options {
            Some(o) if o.mode == Mode::Batch => {
                queued += store.queue_in_jobs(run, &seqs, o.job_size, None).await?;
            }
            _ => {
                let messages: Vec<BatchMessage> =
                    chunk.iter().map(|b| BatchMessage::of(run, b)).collect();
                queue.send(&messages).await?;
                queued += chunk.len() as u64;
            }
        }
    }
    Ok(queued)
}

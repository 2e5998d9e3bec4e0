//! Bringing failed work back: `backfill redrive` moves messages from the
//! dead-letter queue to the queue with receive/send/delete (which works on AWS
//! and on emulators without StartMessageMoveTask), and `backfill retry-failed`
//! queues a run's failed batches again from the status tables, even after the
//! dead-letter queue's messages have expired.

use crate::ids::RunId;
use crate::queue::{BatchMessage, Queue, QueueError, SqsQueue};
use crate::status::{BatchState, StatusStore};
use crate::supabase::RestError;
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
            .receive_hidden(room as i32, Duration::from_secs(1), Some(SKIP_VISIBILITY))
            .await?;
        if received.is_empty() {
            break;
        }
        let mut bodies = Vec::new();
        let mut receipts = Vec::new();
        for (msg, receipt) in received {
            match BatchMessage::parse(&msg.body) {
                Err(_) => report.unreadable += 1,
                Ok(m) if run.is_some_and(|r| r != m.run_id) => report.skipped += 1,
                Ok(_) => {
                    bodies.push(msg.body);
                    receipts.push(receipt);
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
    Rest(#[from] RestError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Queues every batch of `run` that ended failed; returns how many. When one
/// succeeds it moves from the failed counters to the done ones, counted once.
pub async fn retry_failed<Q: Queue>(
    status: &StatusStore,
    queue: &Q,
    run: RunId,
    unfinished: bool,
) -> Result<u64, RetryError> {
    // A batch still in flight may be queued twice this way; it is counted once.
    let states: &[BatchState] = if unfinished {
        &BatchState::UNFINISHED
    } else {
        &[BatchState::Failed]
    };
    let failed = status.batches_in(run, states).await?;
    let messages: Vec<BatchMessage> = failed.iter().map(|b| BatchMessage::of(run, b)).collect();
    queue.send(&messages).await?;
    Ok(messages.len() as u64)
}

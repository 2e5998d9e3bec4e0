//! The two ways to run workers outside Lambda: `backfill work` consumes SQS the
//! way Lambda's event source mapping does, `backfill run` wires a dispatcher to
//! in-process workers through a memory queue.

use crate::dispatch::{DispatchError, DispatchOptions, DispatchSummary, Dispatcher};
use crate::failpoint;
use crate::ids::RunId;
use crate::queue::{MemoryQueue, QueueError, SqsQueue};
use crate::retry::Backoff;
use crate::worker::Worker;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tallies of messages handled by one consumer.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub messages: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub documents_embedded: u64,
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    embedded: AtomicU64,
    tokens: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Tally {
        Tally {
            messages: self.messages.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            documents_embedded: self.embedded.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
        }
    }
}

/// The pauses between failed receives that `consume_sqs` rides out once the
/// queue has answered: doubling, jittered, about two minutes at most in all.
const RECEIVE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
    max_attempts: 9,
};

/// Options of the SQS consumer.
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// Stop when a receive finds the queue empty, instead of polling forever.
    pub until_empty: bool,
    /// Receive loops running at once, each taking up to `batch_size` messages.
    pub concurrency: usize,
    /// Messages per receive (1-10), handled as one event.
    pub batch_size: i32,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Time one event may take, as a Lambda timeout would bound it.
    pub message_timeout: Duration,
}

/// Long-polls `queue`, hands each receive to the worker as one event, deletes
/// what succeeded and leaves failures to the visibility timeout.
pub async fn consume_sqs(
    worker: &Worker,
    queue: &SqsQueue,
    opts: &ConsumeOptions,
) -> Result<Tally, QueueError> {
    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let reached = AtomicBool::new(false);
    // A batch's lease ends with the message's visibility timeout, so the
    // message SQS brings back after a crash finds its batch free.
    let worker = &match queue.visibility_timeout().await {
        Ok(v) => worker.clone().with_lease_cap(v),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's visibility timeout; batches are leased until each delivery's deadline");
            worker.clone()
        }
    };
    let loops = (0..opts.concurrency.max(1)).map(|_| async {
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let received = match queue.receive(opts.batch_size.clamp(1, 10), opts.wait).await {
                Ok(r) => {
                    reached.store(true, Ordering::Relaxed);
                    failures = 0;
                    r
                }
                // A queue never reached is a setting to fix; one that answered
                // before is having a moment: wait and poll again, for a while.
                Err(e) => {
                    failures += 1;
                    let pause = reached
                        .load(Ordering::Relaxed)
                        .then(|| RECEIVE_BACKOFF.next_delay(failures, None, None, Duration::ZERO))
                        .flatten();
                    let Some(pause) = pause else { return Err(e) };
                    tracing::warn!(error = %e, attempt = failures, pause_ms = pause.as_millis() as u64, "receive failed; polling again");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if received.is_empty() {
                if opts.until_empty {
                    stop.store(true, Ordering::Relaxed);
                }
                continue;
            }
            let (messages, receipts): (Vec<_>, Vec<_>) = received.into_iter().unzip();
            let deadline = Instant::now() + opts.message_timeout;
            let results = worker.handle_all(&messages, Some(deadline)).await;
            let mut done = Vec::new();
            for (receipt, result) in receipts.into_iter().zip(results) {
                counters.messages.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(r) => {
                        counters.succeeded.fetch_add(1, Ordering::Relaxed);
                        counters.embedded.fetch_add(r.embedded, Ordering::Relaxed);
                        counters.tokens.fetch_add(r.tokens, Ordering::Relaxed);
                        done.push(receipt);
                    }
                    Err(_) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            failpoint::crash_point("work_before_delete");
            // Undeleted messages come back after the visibility timeout and are
            // skipped as already done: a failed delete costs a little time only.
            if let Err(e) = queue.delete(&done).await {
                tracing::warn!(error = %e, messages = done.len(), "delete failed; the messages will be redelivered and skipped");
            }
        }
        Ok::<(), QueueError>(())
    });
    for result in futures::future::join_all(loops).await {
        result?;
    }
    Ok(counters.snapshot())
}

/// Options of the all-in-one local run.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub concurrency: usize,
    pub max_receive_count: u32,
    /// First redelivery delay of a failed batch; doubles with each delivery.
    pub retry_delay: Duration,
    pub message_timeout: Duration,
}

/// Dispatches into a memory queue while `concurrency` workers drain it; returns
/// when every message has succeeded or used up its deliveries.
pub async fn run_local(
    dispatcher: &Dispatcher<Arc<MemoryQueue>>,
    queue: Arc<MemoryQueue>,
    worker: &Worker,
    run: RunId,
    options: &DispatchOptions,
    local: &LocalOptions,
) -> Result<(DispatchSummary, Tally), DispatchError> {
    let counters = Counters::default();
    let dispatched = AtomicBool::new(false);
    let dispatch = async {
        let result = dispatcher.dispatch_run(run, options, None).await;
        dispatched.store(true, Ordering::SeqCst);
        result
    };
    let workers = (0..local.concurrency.max(1)).map(|_| async {
        loop {
            let Some(msg) = queue.receive(Duration::from_millis(100)).await else {
                if dispatched.load(Ordering::SeqCst) && queue.is_drained() {
                    break;
                }
                continue;
            };
            counters.messages.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + local.message_timeout;
            match worker.handle(&msg, Some(deadline)).await {
                Ok(r) => {
                    counters.succeeded.fetch_add(1, Ordering::Relaxed);
                    counters.embedded.fetch_add(r.embedded, Ordering::Relaxed);
                    counters.tokens.fetch_add(r.tokens, Ordering::Relaxed);
                    queue.ack();
                }
                Err(e) if e.is_transient() && msg.receive_count < local.max_receive_count => {
                    let delay =
                        local.retry_delay * 2u32.pow(msg.receive_count.saturating_sub(1).min(6));
                    queue.redeliver(msg, delay);
                }
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    queue.ack();
                }
            }
        }
    });
    let (summary, _) = tokio::join!(dispatch, futures::future::join_all(workers));
    Ok((summary?, counters.snapshot()))
}

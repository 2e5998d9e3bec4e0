//! Workers outside Lambda, one consumer loop for both queues: `backfill work`
//! consumes SQS the way Lambda's event source mapping does, and `backfill run`
//! wires a dispatcher to the same loop through a memory queue. What differs
//! is the queue's (when it is drained, when a left message comes back) or an
//! option's (when to stop, how a failure is settled).

use crate::dispatch::{DispatchError, DispatchOptions, DispatchSummary, Dispatcher};
use crate::failpoint;
use crate::ids::RunId;
use crate::queue::{IncomingMessage, MemoryQueue, Queue, QueueError, Settle};
use crate::retry::Backoff;
use crate::worker::{BatchReport, Worker, WorkerError};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tallies of messages handled by one consumer.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub messages: u64,
    pub succeeded: u64,
    /// Failed deliveries left to the queue or given up on.
    pub failed: u64,
    /// Failed deliveries sent back to be tried again after a delay.
    pub redelivered: u64,
    pub documents_embedded: u64,
    pub tokens: u64,
}

impl Tally {
    /// Counts one delivery's result, and says how the queue is to settle it.
    fn record(
        &mut self,
        result: Result<BatchReport, WorkerError>,
        receive_count: u32,
        on_failure: OnFailure,
    ) -> Settle {
        self.messages += 1;
        match result {
            Ok(r) => {
                self.succeeded += 1;
                self.documents_embedded += r.embedded;
                self.tokens += r.tokens;
                Settle::Delete
            }
            Err(e) => {
                let settle = on_failure.settle(&e, receive_count);
                match settle {
                    Settle::RedeliverAfter(_) => self.redelivered += 1,
                    Settle::Delete | Settle::Leave => self.failed += 1,
                }
                settle
            }
        }
    }

    fn add(&mut self, other: Tally) {
        self.messages += other.messages;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.redelivered += other.redelivered;
        self.documents_embedded += other.documents_embedded;
        self.tokens += other.tokens;
    }
}

/// The pauses between failed receives that the loop rides out once the queue
/// has answered: doubling, jittered, about two minutes at most in all.
const RECEIVE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
    max_attempts: 9,
};

/// How the loop settles a delivery that failed.
#[derive(Clone, Copy, Debug)]
pub enum OnFailure {
    /// Leave it to the queue, as Lambda does: SQS brings it back after the
    /// visibility timeout, and its redrive policy moves it to the dead-letter
    /// queue in the end.
    Leave,
    /// Bring a transient failure back after the backoff's exact delay for its
    /// receive count, until `max_attempts` receives; delete the others, failed
    /// for good (the worker recorded why in the batch row).
    Redeliver(Backoff),
}

impl OnFailure {
    fn settle(self, error: &WorkerError, receive_count: u32) -> Settle {
        match self {
            OnFailure::Leave => Settle::Leave,
            OnFailure::Redeliver(backoff) => backoff
                .exact_delay(receive_count)
                .filter(|_| error.is_transient())
                .map_or(Settle::Delete, Settle::RedeliverAfter),
        }
    }
}

/// Options of the consumer loop.
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// Stop when a receive finds the queue empty, instead of when the queue
    /// is drained (never, for SQS).
    pub until_empty: bool,
    /// Receive loops running at once, each taking up to `batch_size` messages.
    pub concurrency: usize,
    /// Messages per receive (1-10 on SQS), handled as one event.
    pub batch_size: usize,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Time one event may take, as a Lambda timeout would bound it.
    pub message_timeout: Duration,
    pub on_failure: OnFailure,
}

/// What the loop hands each receive to: the worker, or a stand-in in tests.
#[async_trait]
trait Handler: Sync {
    async fn handle_event(
        &self,
        messages: &[IncomingMessage],
        deadline: Instant,
    ) -> Vec<Result<BatchReport, WorkerError>>;
}

#[async_trait]
impl Handler for Worker {
    async fn handle_event(
        &self,
        messages: &[IncomingMessage],
        deadline: Instant,
    ) -> Vec<Result<BatchReport, WorkerError>> {
        self.handle_all(messages, Some(deadline)).await
    }
}

/// Receives from `queue`, hands each receive to the worker as one event with
/// its own deadline, and settles each message by its result, until the
/// options or the queue say to stop.
pub async fn consume<Q: Queue + ?Sized>(
    worker: &Worker,
    queue: &Q,
    opts: &ConsumeOptions,
) -> Result<Tally, QueueError> {
    // A batch's lease ends with the message's visibility timeout, so the
    // message the queue brings back after a crash finds its batch free.
    let capped;
    let (worker, visibility) = match queue.visibility_timeout().await {
        Ok(Some(visibility)) => {
            capped = worker.clone().with_lease_cap(visibility);
            (&capped, Some(visibility))
        }
        Ok(None) => (worker, None),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's visibility timeout; batches are leased until each delivery's deadline");
            (worker, None)
        }
    };
    consume_with(worker, queue, opts, visibility).await
}

/// Runs `work` while keeping `receipts` hidden, for a queue whose visibility
/// timeout is shorter than an event may take: otherwise the queue hands the
/// messages to a second consumer mid-work, which then spends the same rate
/// budget again, and each such delivery counts towards the dead-letter queue.
/// A crashed consumer stops renewing, so its messages still come back after
/// one visibility timeout.
async fn keeping_hidden<Q: Queue + ?Sized, T>(
    queue: &Q,
    receipts: &[String],
    visibility: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (visibility / 2).max(Duration::from_millis(500));
    let renew: Vec<(String, Settle)> = receipts
        .iter()
        .map(|r| (r.clone(), Settle::RedeliverAfter(visibility)))
        .collect();
    let renewing = async {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = queue.settle(&renew).await {
                tracing::warn!(error = %e, "cannot extend the messages' visibility; the queue may deliver them again, and their batches' leases turn the second delivery away");
                return;
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => out,
        () = renewing => work.await,
    }
}

/// The one loop, over any handler so that its logic is tested without a stack.
async fn consume_with<Q: Queue + ?Sized, H: Handler>(
    handler: &H,
    queue: &Q,
    opts: &ConsumeOptions,
    visibility: Option<Duration>,
) -> Result<Tally, QueueError> {
    let renew_every_event = visibility.filter(|v| *v < opts.message_timeout);
    let stop = AtomicBool::new(false);
    let reached = AtomicBool::new(false);
    let loops = (0..opts.concurrency.max(1)).map(|_| async {
        let mut tally = Tally::default();
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let received = match queue.receive(opts.batch_size, opts.wait).await {
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
                if opts.until_empty || queue.is_drained() {
                    stop.store(true, Ordering::Relaxed);
                }
                continue;
            }
            let (messages, receipts): (Vec<_>, Vec<_>) =
                received.into_iter().map(|r| (r.message, r.receipt)).unzip();
            let deadline = Instant::now() + opts.message_timeout;
            let work = handler.handle_event(&messages, deadline);
            let results = match renew_every_event {
                Some(visibility) => keeping_hidden(queue, &receipts, visibility, work).await,
                None => work.await,
            };
            let settled: Vec<(String, Settle)> = receipts
                .into_iter()
                .zip(messages.iter().zip(results))
                .map(|(receipt, (msg, result))| {
                    let settle = tally.record(result, msg.receive_count, opts.on_failure);
                    (receipt, settle)
                })
                .collect();
            failpoint::crash_point("work_before_delete");
            // What is not settled comes back after the visibility timeout and
            // is skipped if done: a failed settle costs a little time only.
            if let Err(e) = queue.settle(&settled).await {
                tracing::warn!(error = %e, messages = settled.len(), "settling failed; those messages come back and are skipped if done");
            }
        }
        Ok(tally)
    });
    let mut total = Tally::default();
    for tally in futures::future::join_all(loops).await {
        total.add(tally?);
    }
    Ok(total)
}

/// Options of the all-in-one local run.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub concurrency: usize,
    pub max_receive_count: u32,
    /// First redelivery delay of a failed batch; doubles with each delivery,
    /// up to 64 times this.
    pub retry_delay: Duration,
    pub message_timeout: Duration,
}

impl LocalOptions {
    /// One message a receive, until the dispatch has ended and the queue is
    /// drained; the memory queue wakes its receivers as soon as there is
    /// something to do, so the wait only bounds an idle receive.
    fn consume_options(&self) -> ConsumeOptions {
        ConsumeOptions {
            until_empty: false,
            concurrency: self.concurrency,
            batch_size: 1,
            wait: Duration::from_secs(20),
            message_timeout: self.message_timeout,
            on_failure: OnFailure::Redeliver(Backoff {
                base: self.retry_delay,
                cap: self.retry_delay.saturating_mul(64),
                max_attempts: self.max_receive_count,
            }),
        }
    }
}

/// Dispatches into `queue` (the dispatcher's) while the consumer loop drains
/// it; returns when every message has succeeded or used up its deliveries.
pub async fn run_local(
    dispatcher: &Dispatcher<Arc<MemoryQueue>>,
    queue: &MemoryQueue,
    worker: &Worker,
    run: RunId,
    options: &DispatchOptions,
    local: &LocalOptions,
) -> Result<(DispatchSummary, Tally), DispatchError> {
    let dispatch = async {
        let result = dispatcher.dispatch_run(run, options, None).await;
        // Whether it ended well or not, nothing more is coming.
        queue.close();
        result
    };
    let consume_options = local.consume_options();
    let consume = consume(worker, queue, &consume_options);
    let (summary, tally) = tokio::join!(dispatch, consume);
    Ok((summary?, tally?))
}

#[cfg(test)]
mod tests;

//! The consumer loop's logic against the memory queue, with a stand-in for the
//! worker: no stack needed. Time is paused, so the delays are exact.

use super::*;
use crate::queue::{BatchMessage, Received};
use crate::testkit::messages;
use std::sync::Mutex;

/// Fails each delivery up to `fail_through` receives with `error`, then
/// embeds one document; remembers the receive counts it saw.
struct Flaky {
    fail_through: u32,
    error: fn() -> WorkerError,
    seen: Mutex<Vec<u32>>,
}

impl Flaky {
    fn new(fail_through: u32, error: fn() -> WorkerError) -> Self {
        Self {
            fail_through,
            error,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<u32> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_unstable();
        seen
    }
}

#[async_trait]
impl Handler for Flaky {
    async fn handle_event(
        &self,
        messages: &[IncomingMessage],
        _deadline: Instant,
    ) -> Vec<Result<BatchReport, WorkerError>> {
        messages
            .iter()
            .map(|m| {
                self.seen.lock().unwrap().push(m.receive_count);
                if m.receive_count <= self.fail_through {
                    Err((self.error)())
                } else {
                    Ok(BatchReport {
                        embedded: 1,
                        tokens: 10,
                        ..Default::default()
                    })
                }
            })
            .collect()
    }
}

fn transient() -> WorkerError {
    WorkerError::OutOfTime
}

fn permanent() -> WorkerError {
    WorkerError::UnknownRun(RunId::random())
}

async fn queue_of(n: u32, closed: bool) -> MemoryQueue {
    let queue = MemoryQueue::new();
    queue.send(&messages(n)).await.unwrap();
    if closed {
        queue.close();
    }
    queue
}

const WAIT: Duration = Duration::from_secs(20);

fn options(until_empty: bool, on_failure: OnFailure) -> ConsumeOptions {
    ConsumeOptions {
        until_empty,
        concurrency: 2,
        batch_size: 10,
        wait: WAIT,
        message_timeout: Duration::from_secs(60),
        on_failure,
    }
}

/// One second, doubling; five receives at most.
const REDELIVER: OnFailure = OnFailure::Redeliver(Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
    max_attempts: 5,
});

#[tokio::test(start_paused = true)]
async fn transient_failures_come_back_after_doubling_delays() {
    let queue = queue_of(2, true).await;
    let flaky = Flaky::new(2, transient);
    let started = Instant::now();
    let tally = consume_with(&flaky, &queue, &options(false, REDELIVER), None)
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1 + 2));
    assert_eq!(flaky.seen(), [1, 1, 2, 2, 3, 3]);
    let expected = Tally {
        messages: 6,
        succeeded: 2,
        failed: 0,
        redelivered: 4,
        documents_embedded: 2,
        tokens: 20,
    };
    assert_eq!(tally, expected);
    assert!(queue.is_drained());
}

#[tokio::test(start_paused = true)]
async fn failures_past_the_receive_limit_or_for_good_are_deleted_as_failed() {
    let queue = queue_of(2, true).await;
    let always = Flaky::new(u32::MAX, transient);
    let tally = consume_with(&always, &queue, &options(false, REDELIVER), None)
        .await
        .unwrap();
    assert_eq!(always.seen(), [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    assert_eq!(
        (tally.failed, tally.redelivered, tally.succeeded),
        (2, 8, 0)
    );
    assert!(queue.is_drained());

    let queue = queue_of(2, true).await;
    let broken = Flaky::new(u32::MAX, permanent);
    let started = Instant::now();
    let tally = consume_with(&broken, &queue, &options(false, REDELIVER), None)
        .await
        .unwrap();
    assert_eq!(broken.seen(), [1, 1], "a permanent failure came back");
    assert_eq!((tally.failed, tally.redelivered), (2, 0));
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn until_empty_stops_at_an_empty_receive_and_leave_leaves_failures_to_the_queue() {
    // Open, as SQS always is: only `until_empty` stops the loop.
    let queue = queue_of(3, false).await;
    let flaky = Flaky::new(1, permanent);
    let started = Instant::now();
    let tally = consume_with(&flaky, &queue, &options(true, OnFailure::Leave), None)
        .await
        .unwrap();
    // Left messages come back when the queue says: at once, here.
    assert_eq!(flaky.seen(), [1, 1, 1, 2, 2, 2]);
    assert_eq!((tally.messages, tally.failed, tally.succeeded), (6, 3, 3));
    assert_eq!(started.elapsed(), WAIT, "one empty receive, then stop");
    assert!(!queue.is_drained(), "an open queue is never drained");
}

#[tokio::test(start_paused = true)]
async fn without_until_empty_the_loop_outlasts_empty_receives_until_the_queue_drains() {
    let queue = queue_of(0, false).await;
    let flaky = Flaky::new(0, transient);
    let feed = async {
        tokio::time::sleep(WAIT * 3).await;
        queue.send(&messages(1)).await.unwrap();
        tokio::time::sleep(WAIT).await;
        queue.close();
        Instant::now()
    };
    let opts = options(false, REDELIVER);
    let (tally, closed_at) = tokio::join!(consume_with(&flaky, &queue, &opts, None), feed);
    assert_eq!(tally.unwrap().succeeded, 1);
    assert_eq!(
        Instant::now(),
        closed_at,
        "stopped as soon as the queue drained"
    );
}

/// The memory queue behind receives that fail on the calls `failing` lists
/// (counting from 1), as a queue that is briefly unreachable.
struct Flickering {
    inner: MemoryQueue,
    failing: Vec<u32>,
    calls: Mutex<u32>,
}

#[async_trait]
impl Queue for Flickering {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        self.inner.send(messages).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if self.failing.contains(&call) {
            return Err(QueueError::Receive {
                queue_url: "flickering".into(),
                reason: format!("call {call} fails"),
            });
        }
        self.inner.receive(max, wait).await
    }

    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        self.inner.settle(settled).await
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        self.inner.visibility_timeout().await
    }

    fn is_drained(&self) -> bool {
        self.inner.is_drained()
    }
}

#[tokio::test(start_paused = true)]
async fn receive_failures_are_ridden_out_only_after_the_queue_has_answered() {
    let flaky = Flaky::new(0, transient);
    let mut single = options(false, REDELIVER);
    single.concurrency = 1;

    let never = Flickering {
        inner: queue_of(1, true).await,
        failing: vec![1],
        calls: Mutex::new(0),
    };
    let err = consume_with(&flaky, &never, &single, None)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Receive { .. }), "{err}");

    let flickering = Flickering {
        inner: queue_of(2, true).await,
        failing: vec![2, 3, 4],
        calls: Mutex::new(0),
    };
    single.batch_size = 1;
    let tally = consume_with(&flaky, &flickering, &single, None)
        .await
        .unwrap();
    assert_eq!(tally.succeeded, 2);
    // One message, three failures ridden out, the other message, drained.
    assert_eq!(*flickering.calls.lock().unwrap(), 6);
}

/// Takes 23 seconds over each event, then succeeds.
struct Slow;

#[async_trait]
impl Handler for Slow {
    async fn handle_event(
        &self,
        messages: &[IncomingMessage],
        _deadline: Instant,
    ) -> Vec<Result<BatchReport, WorkerError>> {
        tokio::time::sleep(Duration::from_secs(23)).await;
        messages
            .iter()
            .map(|_| Ok(BatchReport::default()))
            .collect()
    }
}

/// Remembers every settle it passes on, with when it came.
struct Recording {
    inner: MemoryQueue,
    settles: Mutex<Vec<(Duration, Settle)>>,
    started: Instant,
}

#[async_trait]
impl Queue for Recording {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        self.inner.send(messages).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        self.inner.receive(max, wait).await
    }

    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        let at = self.started.elapsed();
        self.settles
            .lock()
            .unwrap()
            .extend(settled.iter().map(|(_, s)| (at, *s)));
        // The memory queue would treat a renewal as a redelivery.
        let ends: Vec<_> = settled
            .iter()
            .filter(|(_, s)| !matches!(s, Settle::RedeliverAfter(_)))
            .cloned()
            .collect();
        self.inner.settle(&ends).await
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        self.inner.visibility_timeout().await
    }

    fn is_drained(&self) -> bool {
        self.inner.is_drained()
    }
}

#[tokio::test(start_paused = true)]
async fn messages_stay_hidden_while_an_event_outlasts_the_visibility_timeout() {
    let mut opts = options(true, OnFailure::Leave);
    opts.concurrency = 1;
    let queue = Recording {
        inner: queue_of(2, true).await,
        settles: Mutex::new(Vec::new()),
        started: Instant::now(),
    };
    let visibility = Duration::from_secs(10);
    let tally = consume_with(&Slow, &queue, &opts, Some(visibility))
        .await
        .unwrap();
    assert_eq!(tally.succeeded, 2);
    let secs = |s: u64| Duration::from_secs(s);
    let renew = Settle::RedeliverAfter(visibility);
    let mut expected: Vec<(Duration, Settle)> = [5, 5, 10, 10, 15, 15, 20, 20]
        .map(|s| (secs(s), renew))
        .to_vec();
    expected.extend([(secs(23), Settle::Delete), (secs(23), Settle::Delete)]);
    assert_eq!(*queue.settles.lock().unwrap(), expected);

    // A visibility timeout that outlasts the event needs no renewal.
    let queue = Recording {
        inner: queue_of(1, true).await,
        settles: Mutex::new(Vec::new()),
        started: Instant::now(),
    };
    consume_with(&Slow, &queue, &opts, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(
        *queue.settles.lock().unwrap(),
        vec![(secs(23), Settle::Delete)]
    );
}

//! The queue of `backfill run` and of the unit tests: SQS's way of delivering
//! in one process. A received message stays hidden until settled (there is no
//! visibility timeout: nothing here crashes apart from the whole process), a
//! message settled for redelivery comes back after its delay with its receive
//! count raised, and once the dispatch has closed the queue and every message
//! is deleted, the queue is drained and the consumers stop.

use super::{BatchMessage, IncomingMessage, Queue, QueueError, Received, Settle};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    /// Wakes waiting receivers when a message is sent, comes back or is
    /// deleted, or the queue closes.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    visible: VecDeque<IncomingMessage>,
    /// Received and not yet settled, by receipt.
    in_flight: HashMap<String, IncomingMessage>,
    /// Settled for redelivery, each with the instant it becomes visible.
    delayed: Vec<(Instant, IncomingMessage)>,
    /// Messages sent and receipts handed out, for unique ids.
    sent: u64,
    receipts: u64,
    closed: bool,
}

impl State {
    fn is_drained(&self) -> bool {
        self.closed
            && self.visible.is_empty()
            && self.in_flight.is_empty()
            && self.delayed.is_empty()
    }

    /// Makes visible the redeliveries that are due; returns when the next is.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        self.visible.extend(due.into_iter().map(|(_, msg)| msg));
        self.delayed.iter().map(|(at, _)| *at).min()
    }

    fn take(&mut self, max: usize) -> Vec<Received> {
        let n = max.max(1).min(self.visible.len());
        let taken: Vec<IncomingMessage> = self.visible.drain(..n).collect();
        taken
            .into_iter()
            .map(|mut message| {
                message.receive_count += 1;
                self.receipts += 1;
                let receipt = format!("receipt-{}", self.receipts);
                self.in_flight.insert(receipt.clone(), message.clone());
                Received { message, receipt }
            })
            .collect()
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left the state whole: every change
        // under it is a single push, remove or drain.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No more messages will be sent: once every message is deleted, the
    /// queue is drained.
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(QueueError::Send {
                    queue_url: "memory".into(),
                    reason: "the queue was closed when its dispatch ended".into(),
                });
            }
            for m in messages {
                state.sent += 1;
                let message_id = Some(format!("mem-{}", state.sent));
                state.visible.push_back(IncomingMessage {
                    message_id,
                    body: m.to_body(),
                    receive_count: 0,
                });
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Returns at once, empty, when the queue is drained.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            // Registered before the state is read, so no change in between is missed.
            let changed = self.changed.notified();
            let wake = {
                let mut state = self.state();
                let next = state.promote(Instant::now());
                if !state.visible.is_empty() {
                    return Ok(state.take(max));
                }
                if state.is_drained() || Instant::now() >= give_up {
                    return Ok(Vec::new());
                }
                next.map_or(give_up, |at| at.min(give_up))
            };
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Fails for a receipt that is not in flight (settled already), after
    /// settling the others.
    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        let mut unknown = 0;
        {
            let mut state = self.state();
            for (receipt, how) in settled {
                let Some(message) = state.in_flight.remove(receipt) else {
                    unknown += 1;
                    continue;
                };
                match how {
                    Settle::Delete => {}
                    Settle::Leave => state.visible.push_back(message),
                    Settle::RedeliverAfter(delay) => {
                        state.delayed.push((Instant::now() + *delay, message))
                    }
                }
            }
        }
        self.changed.notify_waiters();
        if unknown > 0 {
            return Err(QueueError::Settle {
                queue_url: "memory".into(),
                reason: format!("{unknown} receipt(s) not in flight"),
            });
        }
        Ok(())
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        Ok(None)
    }

    fn is_drained(&self) -> bool {
        self.state().is_drained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::messages;

    const WAIT: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn redelivers_after_the_delay_with_the_count_raised() {
        let queue = MemoryQueue::new();
        queue.send(&messages(3)).await.unwrap();
        let first = queue.receive(2, WAIT).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.message.receive_count == 1));
        assert_ne!(first[0].receipt, first[1].receipt);
        let body = first[0].message.body.clone();
        queue
            .settle(&[
                (first[0].receipt.clone(), Settle::RedeliverAfter(WAIT * 3)),
                (first[1].receipt.clone(), Settle::Delete),
            ])
            .await
            .unwrap();
        let third = queue.receive(10, WAIT).await.unwrap();
        assert_eq!(third.len(), 1);
        assert_ne!(third[0].message.body, body);

        let started = Instant::now();
        assert!(queue.receive(10, WAIT).await.unwrap().is_empty());
        assert_eq!(started.elapsed(), WAIT, "an empty receive waits it out");
        let again = queue.receive(10, WAIT * 5).await.unwrap();
        assert_eq!(
            started.elapsed(),
            WAIT * 3,
            "back after its delay, not before"
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message.body, body);
        assert_eq!(again[0].message.receive_count, 2);
        assert_ne!(again[0].receipt, first[0].receipt);
    }

    #[tokio::test(start_paused = true)]
    async fn leave_brings_a_message_back_at_once_and_receipts_settle_once() {
        let queue = MemoryQueue::new();
        queue.send(&messages(1)).await.unwrap();
        let got = queue.receive(10, WAIT).await.unwrap().remove(0);
        let settled = [(got.receipt.clone(), Settle::Leave)];
        queue.settle(&settled).await.unwrap();
        assert!(matches!(
            queue.settle(&settled).await,
            Err(QueueError::Settle { .. })
        ));
        let back = queue.receive(10, Duration::ZERO).await.unwrap().remove(0);
        assert_eq!(back.message.receive_count, 2);
        assert_eq!(back.message.message_id, got.message.message_id);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_once_closed_and_every_message_deleted() {
        let queue = MemoryQueue::new();
        queue.send(&messages(1)).await.unwrap();
        queue.close();
        assert!(queue.send(&messages(1)).await.is_err(), "sent after close");
        let got = queue.receive(10, WAIT).await.unwrap().remove(0);
        assert!(!queue.is_drained(), "a message is in flight");
        queue
            .settle(&[(got.receipt, Settle::RedeliverAfter(WAIT))])
            .await
            .unwrap();
        assert!(!queue.is_drained(), "a message waits for redelivery");
        let got = queue.receive(10, WAIT * 2).await.unwrap().remove(0);
        queue
            .settle(&[(got.receipt, Settle::Delete)])
            .await
            .unwrap();
        assert!(queue.is_drained());
        let started = Instant::now();
        assert!(queue.receive(10, WAIT).await.unwrap().is_empty());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a drained queue waits for nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_wakes_for_a_send_and_for_the_drain() {
        let queue = std::sync::Arc::new(MemoryQueue::new());
        let receive = |queue: &std::sync::Arc<MemoryQueue>| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.receive(10, WAIT).await.unwrap() })
        };
        let waiting = receive(&queue);
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.send(&messages(2)).await.unwrap();
        let got = waiting.await.unwrap();
        assert_eq!(got.len(), 2);

        let started = Instant::now();
        let waiting = receive(&queue);
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.close();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "stopped with messages in flight");
        let deletes: Vec<_> = got
            .into_iter()
            .map(|r| (r.receipt, Settle::Delete))
            .collect();
        queue.settle(&deletes).await.unwrap();
        assert!(waiting.await.unwrap().is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}

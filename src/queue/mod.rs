//! Batch messages and the queues that carry them: SQS for Lambda and
//! `backfill work` ([`SqsQueue`]), an in-memory queue for `backfill run` and
//! the unit tests ([`MemoryQueue`]). Both deliver the same way, at least once,
//! so one consumer loop (`runner`) serves both.

mod memory;
mod sqs;

pub use memory::MemoryQueue;
pub use sqs::SqsQueue;

use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::store::BatchRef;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Version of the message body; a worker refuses bodies it does not know.
pub const MESSAGE_VERSION: u32 = 1;

/// One SQS message: which batch of which run. The ids themselves live in the
/// batch row, so a message stays small and a redriven one still finds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    pub v: u32,
    pub run_id: RunId,
    pub batch: BatchSeq,
    /// The id range, for logs and for a person reading the DLQ.
    pub first_id: DocumentId,
    pub last_id: DocumentId,
}

#[derive(Clone, Debug, Error, PartialEq)]
pub enum MessageError {
    #[error("message body is not JSON ({reason}); expected {{\"v\":1,\"run_id\":\"<uuid>\",\"batch\":N,\"first_id\":N,\"last_id\":N}}")]
    NotJson { reason: String },
    #[error("message body is not a batch message: {reason}")]
    Invalid { reason: String },
}

impl BatchMessage {
    pub fn of(run_id: RunId, batch: &BatchRef) -> Self {
        Self {
            v: MESSAGE_VERSION,
            run_id,
            batch: batch.seq,
            first_id: batch.first_id,
            last_id: batch.last_id,
        }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| MessageError::NotJson {
                reason: e.to_string(),
            })?;
        let msg: BatchMessage =
            serde_path_to_error::deserialize(value).map_err(|e| MessageError::Invalid {
                reason: if e.path().to_string() == "." {
                    e.inner().to_string()
                } else {
                    format!("{}: {}", e.path(), e.inner())
                },
            })?;
        if msg.v != MESSAGE_VERSION {
            return Err(MessageError::Invalid {
                reason: format!(
                    "v: version {} is not understood by this worker (it reads {MESSAGE_VERSION})",
                    msg.v
                ),
            });
        }
        Ok(msg)
    }
}

/// A delivered message, whichever queue or Lambda event it came from.
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    /// SQS always sets it; a record without one cannot be reported alone.
    pub message_id: Option<String>,
    pub body: String,
    /// 1 on first delivery.
    pub receive_count: u32,
}

/// A message taken from a queue, with the receipt that settles this one
/// delivery of it.
#[derive(Clone, Debug)]
pub struct Received {
    pub message: IncomingMessage,
    pub receipt: String,
}

/// How one delivery ended, as the queue is told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Finished with, succeeded or failed for good: the queue forgets it.
    Delete,
    /// Left as it is: it comes back when the queue's visibility timeout ends
    /// (at once on a queue without one), where the queue's redrive policy
    /// may move it to the dead-letter queue instead.
    Leave,
    /// Comes back after this delay instead of the visibility timeout.
    RedeliverAfter(Duration),
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("cannot send to the queue {queue_url}: {reason}. Check BACKFILL_QUEUE_URL, AWS credentials and region")]
    Send { queue_url: String, reason: String },
    #[error("the queue refused {count} message(s): {reason}")]
    Refused { count: usize, reason: String },
    #[error("cannot receive from {queue_url}: {reason}")]
    Receive { queue_url: String, reason: String },
    #[error("cannot delete messages from {queue_url} or change their visibility: {reason}")]
    Settle { queue_url: String, reason: String },
}

/// A queue of batch messages: what the dispatcher sends to and the consumer
/// loop receives from.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends every message or fails; on failure some may have been sent, which
    /// the at-least-once design tolerates.
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError>;

    /// Up to `max` messages, waiting up to `wait` for the first; none when
    /// nothing arrives in time. Each stays hidden until it is settled or its
    /// visibility timeout ends.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError>;

    /// Tells the queue how each delivery, named by its receipt, ended.
    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError>;

    /// How long a received message stays hidden unless settled; `None` when
    /// it stays hidden until then.
    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError>;

    /// Nothing will ever be received again: closed to senders, with every
    /// message deleted. Never so for a queue that others may send to.
    fn is_drained(&self) -> bool {
        false
    }
}

/// A queue shared with the dispatcher, as `backfill run` shares its memory queue.
#[async_trait]
impl<T: Queue + ?Sized> Queue for std::sync::Arc<T> {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        (**self).send(messages).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        (**self).receive(max, wait).await
    }

    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        (**self).settle(settled).await
    }

    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        (**self).visibility_timeout().await
    }

    fn is_drained(&self) -> bool {
        (**self).is_drained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_bodies() {
        let m = BatchMessage {
            v: 1,
            run_id: RunId::random(),
            batch: BatchSeq(3),
            first_id: DocumentId(10),
            last_id: DocumentId(20),
        };
        assert_eq!(BatchMessage::parse(&m.to_body()).unwrap(), m);
        assert!(matches!(
            BatchMessage::parse("not json"),
            Err(MessageError::NotJson { .. })
        ));
        let err = BatchMessage::parse(r#"{"v":1,"run_id":"x","batch":1,"first_id":1,"last_id":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("run_id"), "{err}");
        let err = BatchMessage::parse(&m.to_body().replace("\"v\":1", "\"v\":1,\"extra\":true"))
            .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = BatchMessage::parse(&m.to_body().replace("\"v\":1", "\"v\":9")).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }
}

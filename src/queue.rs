//! Batch messages and the queues that carry them: SQS for Lambda and
//! `backfill work`, an in-memory queue for `backfill run`.

use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::status::BatchRef;
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, Mutex};

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

/// A delivered message, whichever queue it came from.
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    /// SQS always sets it; a record without one cannot be reported alone.
    pub message_id: Option<String>,
    pub body: String,
    /// 1 on first delivery.
    pub receive_count: u32,
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("cannot send to the queue {queue_url}: {reason}. Check BACKFILL_QUEUE_URL, AWS credentials and region")]
    Send { queue_url: String, reason: String },
    #[error("the queue refused {count} message(s): {reason}")]
    Refused { count: usize, reason: String },
    #[error("cannot receive from {queue_url}: {reason}")]
    Receive { queue_url: String, reason: String },
    #[error("cannot delete messages from {queue_url}: {reason}")]
    Delete { queue_url: String, reason: String },
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends every message or fails; on failure some may have been sent, which
    /// the at-least-once design tolerates.
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError>;
}

#[async_trait]
impl<T: Queue + ?Sized> Queue for std::sync::Arc<T> {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        (**self).send(messages).await
    }
}

/// SendMessageBatch takes at most 10 entries.
const SQS_BATCH: usize = 10;

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

fn sdk_reason<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub async fn from_env(url: impl Into<String>) -> Self {
        let cfg = aws_config::load_from_env().await;
        Self::new(aws_sdk_sqs::Client::new(&cfg), url)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Numeric queue attributes, 0 where absent.
    async fn numbers<const N: usize>(
        &self,
        names: [aws_sdk_sqs::types::QueueAttributeName; N],
    ) -> Result<[u64; N], QueueError> {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| QueueError::Receive {
                queue_url: self.url.clone(),
                reason: sdk_reason(&e),
            })?
            .attributes
            .unwrap_or_default();
        Ok(names.map(|a| attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0)))
    }

    /// How long a received message stays hidden: the queue's default.
    pub async fn visibility_timeout(&self) -> Result<Duration, QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let [secs] = self.numbers([A::VisibilityTimeout]).await?;
        Ok(Duration::from_secs(secs))
    }

    /// Messages (visible, in flight) by the queue's approximate counts.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let [visible, in_flight] = self
            .numbers([
                A::ApproximateNumberOfMessages,
                A::ApproximateNumberOfMessagesNotVisible,
            ])
            .await?;
        Ok((visible, in_flight))
    }

    /// Long-polls for up to `max` messages (1-10).
    pub async fn receive(
        &self,
        max: i32,
        wait: Duration,
    ) -> Result<Vec<(IncomingMessage, String)>, QueueError> {
        self.receive_hidden(max, wait, None).await
    }

    /// Like `receive`, hiding what it takes for `visibility` instead of the
    /// queue's default.
    pub async fn receive_hidden(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<(IncomingMessage, String)>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .set_visibility_timeout(visibility.map(|v| v.as_secs() as i32))
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| QueueError::Receive {
                queue_url: self.url.clone(),
                reason: sdk_reason(&e),
            })?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle?;
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some((
                    IncomingMessage {
                        message_id: m.message_id,
                        body: m.body.unwrap_or_default(),
                        receive_count,
                    },
                    receipt,
                ))
            })
            .collect())
    }

    pub async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueueError::Delete {
                    queue_url: self.url.clone(),
                    reason: e.to_string(),
                })?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Delete {
                    queue_url: self.url.clone(),
                    reason: sdk_reason(&e),
                })?;
            if let Some(f) = out.failed.first() {
                // Not fatal for correctness: an undeleted message is delivered again and
                // found done. Say so rather than hide it.
                tracing::warn!(failed = out.failed.len(), reason = ?f.message, "some deletes failed; those messages will be redelivered and skipped");
            }
        }
        Ok(())
    }
}

impl SqsQueue {
    /// Sends message bodies, 10 a call, resending the entries a call reports
    /// failed; a sender fault (a malformed entry) is not retried.
    pub async fn send_raw(&self, bodies: &[String]) -> Result<(), QueueError> {
        for chunk in bodies.chunks(SQS_BATCH) {
            let mut pending: Vec<(usize, &String)> = chunk.iter().enumerate().collect();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                attempt += 1;
                let entries = pending
                    .iter()
                    .map(|(i, m)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(m.as_str())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| QueueError::Send {
                        queue_url: self.url.clone(),
                        reason: e.to_string(),
                    })?;
                let result = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                let out = match result {
                    Ok(out) => out,
                    Err(e) if attempt < 5 => {
                        tracing::warn!(attempt, error = %sdk_reason(&e), "SendMessageBatch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                        continue;
                    }
                    Err(e) => {
                        return Err(QueueError::Send {
                            queue_url: self.url.clone(),
                            reason: sdk_reason(&e),
                        })
                    }
                };
                // A 200 answer can still list entries it did not take.
                let failed = out.failed;
                if let Some(f) = failed.iter().find(|f| f.sender_fault) {
                    return Err(QueueError::Refused {
                        count: failed.len(),
                        reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
                    });
                }
                if !failed.is_empty() && attempt >= 5 {
                    return Err(QueueError::Refused {
                        count: failed.len(),
                        reason: failed[0]
                            .message
                            .clone()
                            .unwrap_or_else(|| failed[0].code.clone()),
                    });
                }
                pending.retain(|(i, _)| failed.iter().any(|f| f.id == i.to_string()));
                if !pending.is_empty() {
                    tracing::warn!(
                        attempt,
                        failed = pending.len(),
                        "SendMessageBatch left entries unsent; resending them"
                    );
                    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        let bodies: Vec<String> = messages.iter().map(BatchMessage::to_body).collect();
        self.send_raw(&bodies).await
    }
}

/// The queue of `backfill run`: messages go to the in-process workers, and a
/// failed one comes back after a delay until `max_receive_count`, as with SQS.
#[derive(Debug)]
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<IncomingMessage>,
    rx: Mutex<mpsc::UnboundedReceiver<IncomingMessage>>,
    /// Messages sent and not yet acknowledged, including those waiting to be redelivered.
    outstanding: AtomicUsize,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(rx),
            outstanding: AtomicUsize::new(0),
        }
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Redelivers `msg` after `delay`, as a visibility timeout would.
    pub fn redeliver(&self, mut msg: IncomingMessage, delay: Duration) {
        msg.receive_count += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The receiver is gone only when the run is over.
            let _ = tx.send(msg);
        });
    }

    /// A message is finished with, whether it succeeded or was given up on.
    pub fn ack(&self) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Nothing is queued, in flight or waiting to be redelivered.
    pub fn is_drained(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) == 0
    }

    /// The next message, or `None` when none arrives within `wait`.
    pub async fn receive(&self, wait: Duration) -> Option<IncomingMessage> {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, messages: &[BatchMessage]) -> Result<(), QueueError> {
        for (i, m) in messages.iter().enumerate() {
            self.outstanding.fetch_add(1, Ordering::SeqCst);
            self.tx
                .send(IncomingMessage {
                    message_id: Some(format!("mem-{}-{}-{i}", m.run_id, m.batch)),
                    body: m.to_body(),
                    receive_count: 1,
                })
                .map_err(|_| QueueError::Send {
                    queue_url: "memory".into(),
                    reason: "the in-process workers have stopped".into(),
                })?;
        }
        Ok(())
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

//! The queue on AWS: SQS through aws-sdk-sqs, for Lambda, `backfill work`,
//! `backfill dispatch`, and `backfill redrive` (which also uses the raw sends,
//! hidden receives and deletes here).

use super::{BatchMessage, IncomingMessage, Queue, QueueError, Received, Settle};
use crate::retry::Backoff;
use async_trait::async_trait;
use aws_sdk_sqs::error::BuildError;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use std::time::Duration;

/// The batch calls take at most 10 entries.
const SQS_BATCH: usize = 10;

/// The pauses of `send_raw` between calls that failed or left entries unsent:
/// about six seconds at most in all, on top of the SDK's own retries.
const SEND_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(400),
    cap: Duration::from_secs(5),
    max_attempts: 5,
};

/// The longest visibility timeout SQS accepts.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

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

    fn settle_error(&self, reason: String) -> QueueError {
        QueueError::Settle {
            queue_url: self.url.clone(),
            reason,
        }
    }

    /// Numeric queue attributes, 0 where absent.
    async fn numbers<const N: usize>(
        &self,
        names: [QueueAttributeName; N],
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

    /// Messages (visible, in flight) by the queue's approximate counts.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        let [visible, in_flight] = self
            .numbers([
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ])
            .await?;
        Ok((visible, in_flight))
    }

    /// Like [`Queue::receive`], hiding what it takes for `visibility` instead
    /// of the queue's default.
    pub async fn receive_hidden(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .set_visibility_timeout(visibility.map(|v| v.as_secs() as i32))
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
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
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(Received {
                    receipt: m.receipt_handle?,
                    message: IncomingMessage {
                        message_id: m.message_id,
                        body: m.body.unwrap_or_default(),
                        receive_count,
                    },
                })
            })
            .collect())
    }

    /// Deletes the deliveries of `receipts`. One the queue reports failed is
    /// logged only: it comes back and is found done, which costs a little time.
    pub async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.in_tens(
            receipts,
            |id, r| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(r)
                    .build()
            },
            |entries| async move {
                self.client
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map(|out| out.failed)
                    .map_err(|e| sdk_reason(&e))
            },
            "some deletes failed; those messages will be redelivered and skipped",
        )
        .await
    }

    /// Brings each delivery back after its delay. One the queue reports failed
    /// is logged only: it comes back after the visibility timeout instead.
    async fn redeliver_after(&self, delays: &[(&str, Duration)]) -> Result<(), QueueError> {
        self.in_tens(
            delays,
            |id, (r, delay)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(*r)
                    .visibility_timeout(delay.min(&MAX_VISIBILITY).as_secs() as i32)
                    .build()
            },
            |entries| async move {
                self.client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map(|out| out.failed)
                    .map_err(|e| sdk_reason(&e))
            },
            "some redelivery delays were not set; those messages come back after the visibility timeout",
        )
        .await
    }

    /// One batch call per ten of `items`, each item an entry whose id is its
    /// place in the call. Entries the queue reports failed are only logged,
    /// as `unsettled`: each such message comes back on its own.
    async fn in_tens<T, E, F>(
        &self,
        items: &[T],
        entry: impl Fn(String, &T) -> Result<E, BuildError>,
        call: impl Fn(Vec<E>) -> F,
        unsettled: &str,
    ) -> Result<(), QueueError>
    where
        F: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, String>>,
    {
        for chunk in items.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, item)| entry(i.to_string(), item))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.settle_error(e.to_string()))?;
            let failed = call(entries).await.map_err(|e| self.settle_error(e))?;
            if let Some(f) = failed.first() {
                tracing::warn!(failed = failed.len(), reason = ?f.message, "{unsettled}");
            }
        }
        Ok(())
    }

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
                let pause = SEND_BACKOFF.next_delay(attempt, None, None, Duration::ZERO);
                let out = match (result, pause) {
                    (Ok(out), _) => out,
                    (Err(e), Some(pause)) => {
                        tracing::warn!(attempt, error = %sdk_reason(&e), "SendMessageBatch failed; retrying");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    (Err(e), None) => {
                        return Err(QueueError::Send {
                            queue_url: self.url.clone(),
                            reason: sdk_reason(&e),
                        })
                    }
                };
                // A 200 answer can still list entries it did not take.
                let failed = out.failed;
                let refused = |f: &aws_sdk_sqs::types::BatchResultErrorEntry| QueueError::Refused {
                    count: failed.len(),
                    reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
                };
                if let Some(f) = failed.iter().find(|f| f.sender_fault) {
                    return Err(refused(f));
                }
                pending.retain(|(i, _)| failed.iter().any(|f| f.id == i.to_string()));
                if let Some(f) = failed.first() {
                    let Some(pause) = pause else {
                        return Err(refused(f));
                    };
                    tracing::warn!(
                        attempt,
                        failed = pending.len(),
                        "SendMessageBatch left entries unsent; resending them"
                    );
                    tokio::time::sleep(pause).await;
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

    /// Long-polls for up to `max` messages (1-10), waiting 20 seconds at most.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        self.receive_hidden(max, wait, None).await
    }

    /// Deletes and delays what it is told to, both even when one fails: a
    /// delivery either call misses comes back after the visibility timeout.
    async fn settle(&self, settled: &[(String, Settle)]) -> Result<(), QueueError> {
        let mut deletes = Vec::new();
        let mut delays = Vec::new();
        for (receipt, how) in settled {
            match how {
                Settle::Delete => deletes.push(receipt.clone()),
                Settle::Leave => {}
                Settle::RedeliverAfter(delay) => delays.push((receipt.as_str(), *delay)),
            }
        }
        let deleted = self.delete(&deletes).await;
        let delayed = self.redeliver_after(&delays).await;
        deleted.and(delayed)
    }

    /// The queue's default, read from its attributes.
    async fn visibility_timeout(&self) -> Result<Option<Duration>, QueueError> {
        let [secs] = self
            .numbers([QueueAttributeName::VisibilityTimeout])
            .await?;
        Ok(Some(Duration::from_secs(secs)))
    }
}

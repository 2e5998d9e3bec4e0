//! The worker: turns one batch message into vectors in the table and one
//! counted completion in the status row. Safe to run twice on the same message.

mod bisect;
mod error;
mod settings;

pub use error::WorkerError;
pub(crate) use settings::Settings;
#[cfg(test)]
mod tests;

use crate::embedder::batching;
use crate::embedder::{Calls, Embedder};
use crate::failpoint;
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::inputs::{Combined, Inputs};
use crate::metrics::{BatchRecord, Metrics};
use crate::queue::{BatchMessage, IncomingMessage};
use crate::store::{BatchState, FailedDocument, FailureRecord, Mode, Store, VectorRow};
use futures::future::join_all;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant as StdInstant;
use tokio::time::Instant;
use tracing::Instrument;

/// Time kept back from the deadline to record a failure and answer.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What one message did, for the per-batch log line and the caller.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchReport {
    pub run_id: Option<RunId>,
    pub batch: Option<BatchSeq>,
    pub first_id: Option<DocumentId>,
    pub last_id: Option<DocumentId>,
    /// The batch had already ended: nothing fetched, embedded or counted.
    pub already_done: bool,
    /// The completion was counted by this delivery.
    pub counted: bool,
    pub documents: usize,
    pub fetched: usize,
    pub embedded: u64,
    /// Of those, given the vector of another row of the same text.
    pub copied: u64,
    pub skipped: u64,
    /// Documents the embeddings API rejected on their own (a 400 for that input alone).
    pub failed: usize,
    pub truncated: usize,
    /// Texts over the input limit embedded in chunks and averaged.
    pub averaged: usize,
    pub tokens: u64,
    pub requests: usize,
    pub fetch_ms: u64,
    pub embed_ms: u64,
    pub write_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Worker {
    store: Arc<dyn Store>,
    embedder: Embedder,
    max_receive_count: u32,
    /// The queue's visibility timeout, where it is shorter than a delivery's
    /// deadline: a batch's lease must end by then, so that the message SQS
    /// brings back after a crash finds its batch free.
    lease_cap: Option<Duration>,
    metrics: Metrics,
}

/// A delivery with no deadline holds its batch this long.
const DEFAULT_LEASE: Duration = Duration::from_secs(900);

impl Worker {
    pub fn new(store: Arc<dyn Store>, embedder: Embedder, max_receive_count: u32) -> Self {
        Self {
            store,
            embedder,
            max_receive_count,
            lease_cap: None,
            metrics: Metrics::off(),
        }
    }

    /// This worker, writing a metrics record per delivery into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// This worker, holding batches no longer than `visibility` (the queue's
    /// visibility timeout). Lambda's visibility timeout is six times the
    /// function's timeout, so there the deadline is the shorter of the two.
    pub fn with_lease_cap(mut self, visibility: Duration) -> Self {
        self.lease_cap = Some(visibility);
        self
    }

    /// The provider this worker embeds with.
    pub fn provider(&self) -> &Arc<dyn crate::embedder::Provider> {
        self.embedder.provider()
    }

    /// How long this delivery holds its batch: until its deadline, at most
    /// the queue's visibility timeout.
    fn lease(&self, deadline: Option<Instant>) -> Duration {
        let until_deadline = deadline.map_or(DEFAULT_LEASE, |d| {
            d.saturating_duration_since(Instant::now())
        });
        self.lease_cap
            .map_or(until_deadline, |cap| cap.min(until_deadline))
            .max(Duration::from_secs(1))
    }

    /// Handles every message concurrently; each result stands alone, so one bad
    /// message never fails its neighbours.
    pub async fn handle_all(
        &self,
        messages: &[IncomingMessage],
        deadline: Option<Instant>,
    ) -> Vec<Result<BatchReport, WorkerError>> {
        join_all(messages.iter().map(|m| self.handle(m, deadline))).await
    }

    pub async fn handle(
        &self,
        msg: &IncomingMessage,
        deadline: Option<Instant>,
    ) -> Result<BatchReport, WorkerError> {
        let m = match BatchMessage::parse(&msg.body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(message_id = ?msg.message_id, error = %e, "message rejected");
                return Err(WorkerError::Message(e));
            }
        };
        self.deliver_traced(&m, msg.receive_count, deadline).await
    }

    /// Works a batch in direct mode outside the queue, as a fresh message
    /// would: batch mode's way for a batch the Batch API refused an input of.
    pub async fn work_batch(
        &self,
        m: &BatchMessage,
        deadline: Option<Instant>,
    ) -> Result<BatchReport, WorkerError> {
        self.deliver_traced(m, 1, deadline).await
    }

    async fn deliver_traced(
        &self,
        m: &BatchMessage,
        receive_count: u32,
        deadline: Option<Instant>,
    ) -> Result<BatchReport, WorkerError> {
        // Every line about this batch, the API's and Supabase's retries too,
        // carries the run, the batch and its ids from here.
        let span = tracing::info_span!(
            "batch",
            run_id = %m.run_id,
            batch = m.batch.0,
            first_id = m.first_id.0,
            last_id = m.last_id.0,
            receive_count,
        );
        self.deliver(m, receive_count, deadline)
            .instrument(span)
            .await
    }

    /// One delivery of a batch, its outcome logged and a failure recorded.
    async fn deliver(
        &self,
        m: &BatchMessage,
        receive_count: u32,
        deadline: Option<Instant>,
    ) -> Result<BatchReport, WorkerError> {
        let started = StdInstant::now();
        // Kept outside the work so a failed or cut-off delivery still records
        // what it was billed.
        let calls = Calls::default();
        let work = self.process(m, receive_count, deadline, &calls);
        // Every call inside has its own retries; this bounds them all, so the
        // failure is recorded and answered before Lambda stops the process.
        let result = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                tokio::time::timeout_at(d - ANSWER_MARGIN.min(left / 2), work)
                    .await
                    .unwrap_or(Err(WorkerError::OutOfTime))
            }
            None => work.await,
        };
        let tally = calls.tally();
        let cost = self.provider().cost_usd(tally.billed_tokens, Mode::Direct);
        let mut record = BatchRecord::of(m.run_id, &tally, cost);
        match &result {
            Ok(r) => {
                if r.counted {
                    record.documents_embedded = r.embedded;
                    record.documents_skipped = r.skipped;
                    record.documents_failed = r.failed as u64;
                    record.batches_done = 1;
                }
                tracing::info!(
                    documents = r.documents,
                    embedded = r.embedded,
                    copied = r.copied,
                    skipped = r.skipped,
                    failed = r.failed,
                    truncated = r.truncated,
                    averaged = r.averaged,
                    tokens = r.tokens,
                    requests = r.requests,
                    http_requests = tally.requests,
                    throttled = tally.throttled,
                    rate_wait_ms = tally.rate_wait.as_millis() as u64,
                    already_done = r.already_done,
                    fetch_ms = r.fetch_ms,
                    embed_ms = r.embed_ms,
                    write_ms = r.write_ms,
                    total_ms = started.elapsed().as_millis() as u64,
                    "batch done"
                );
            }
            Err(e) => {
                let failure = self
                    .record_failure(m, receive_count, e, tally.billed_tokens)
                    .await;
                record.documents_embedded = failure.documents_embedded;
                record.documents_failed = failure.documents_failed;
                record.batches_failed = u64::from(failure.counted);
            }
        }
        record.batch_duration = started.elapsed();
        self.metrics.write(record);
        result
    }

    /// Records a failed delivery in the status tables; what they counted.
    async fn record_failure(
        &self,
        m: &BatchMessage,
        receive_count: u32,
        e: &WorkerError,
        billed: u64,
    ) -> FailureRecord {
        let permanent = !e.is_transient() || receive_count >= self.max_receive_count;
        tracing::warn!(permanent, error = %e, "batch failed");
        let recorded_elsewhere = matches!(
            e,
            WorkerError::UnknownRun(_)
                | WorkerError::UnknownBatch(..)
                | WorkerError::FailedBefore(..)
                | WorkerError::Leased(..)
        );
        if recorded_elsewhere {
            return FailureRecord::default();
        }
        self.store
            .fail_batch(m.run_id, m.batch, &e.to_string(), permanent, billed)
            .await
            .unwrap_or_else(|rec| {
                tracing::error!(error = %rec, "could not record the batch failure");
                FailureRecord::default()
            })
    }

    async fn process(
        &self,
        msg: &BatchMessage,
        receive_count: u32,
        deadline: Option<Instant>,
        calls: &Calls,
    ) -> Result<BatchReport, WorkerError> {
        let mut report = BatchReport {
            run_id: Some(msg.run_id),
            batch: Some(msg.batch),
            first_id: Some(msg.first_id),
            last_id: Some(msg.last_id),
            ..Default::default()
        };
        let t = StdInstant::now();
        let start = self
            .store
            .begin_batch(msg.run_id, msg.batch, receive_count, self.lease(deadline))
            .await?;
        if !start.run_found {
            return Err(WorkerError::UnknownRun(msg.run_id));
        }
        if !start.batch_found {
            return Err(WorkerError::UnknownBatch(msg.run_id, msg.batch));
        }
        report.documents = start.ids.len();
        if start.leased {
            return Err(WorkerError::Leased(
                msg.run_id,
                msg.batch,
                start
                    .leased_until
                    .map_or_else(|| "later".into(), |t| t.to_rfc3339()),
            ));
        }
        if start.state.is_some_and(|s| s.is_done()) {
            report.already_done = true;
            return Ok(report);
        }
        // A failed batch comes back on a fresh message (redrive, retry-failed:
        // its first receive) to be tried again; SQS redelivering the message
        // that failed it only walks it to the dead-letter queue.
        if start.state == Some(BatchState::Failed) && receive_count > 1 {
            return Err(WorkerError::FailedBefore(msg.run_id, msg.batch));
        }
        let provider = self.embedder.provider();
        let Settings {
            selection,
            per_request,
            ..
        } = Settings::of(msg.run_id, start.params.as_ref(), provider.as_ref())?;

        failpoint::crash_point("worker_after_begin");
        // Rows whose text another row already holds with a vector as the run
        // wants take that vector: no API call.
        self.store.copy_vectors(msg.run_id, msg.batch).await?;
        // Texts come a bounded answer at a time and are cut to the input limit
        // (or into chunks, to be averaged) as they arrive, so a batch of huge
        // texts never sits whole in memory. Each keeps the hash of its whole
        // text, which its write must match.
        let limits = provider.limits();
        let mut inputs = Inputs::new(
            provider.tokenizer(),
            limits.tokens_per_input,
            selection.spec.long_text,
        );
        let prefix = inputs.prefix_chars();
        self.store
            .for_each_missing(&selection, Some(msg.run_id), &start.ids, prefix, |d| {
                report.fetched += 1;
                inputs.add(d);
            })
            .await?;
        report.fetch_ms = t.elapsed().as_millis() as u64;

        let t = StdInstant::now();
        report.truncated = inputs.truncated();
        report.averaged = inputs.averaged();
        let prepared = &inputs.inputs;
        let counts: Vec<usize> = prepared.iter().map(|(_, p)| p.tokens).collect();
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; prepared.len()];
        let mut failures: Vec<FailedDocument> = Vec::new();
        // The requests of a batch run concurrently; the rate governor decides
        // how many are really in flight.
        let groups = batching::pack(
            &counts,
            per_request.min(limits.inputs_per_request),
            limits.tokens_per_request,
        );
        let mut results = futures::stream::iter(groups)
            .map(|g| self.embed_group(prepared, g, deadline, calls))
            .buffer_unordered(self.embedder.max_concurrent_requests());
        while let Some(group) = results.next().await {
            let group = group?;
            report.tokens += group.tokens;
            report.requests += group.requests;
            for (i, v) in group.vectors {
                vectors[i] = Some(v);
            }
            failures.extend(group.failures);
        }
        drop(results);
        // A document of several chunks fails once, for its first bad chunk.
        failures.sort_by_key(|f| f.id);
        failures.dedup_by_key(|f| f.id);
        report.embed_ms = t.elapsed().as_millis() as u64;
        failpoint::crash_point("worker_after_embed");

        let t = StdInstant::now();
        let failed: HashSet<DocumentId> = failures.iter().map(|f| f.id).collect();
        let (combined, failed_copies) = inputs.combine(&vectors, &failed);
        drop(vectors);
        for (copy, original) in failed_copies {
            if let Some(f) = failures.iter().find(|f| f.id == original) {
                let reason = f.reason.clone();
                failures.push(FailedDocument { id: copy, reason });
            }
        }
        failures.sort_by_key(|f| f.id);
        let rows: Vec<VectorRow<'_>> = combined.iter().map(Combined::row).collect();
        let done = self
            .store
            .write_and_complete(msg.run_id, msg.batch, &rows, report.tokens, &failures)
            .await?;
        report.write_ms = t.elapsed().as_millis() as u64;
        failpoint::crash_point("worker_after_complete");
        report.counted = done.counted;
        report.embedded = done.written;
        report.copied = done.copied;
        report.skipped = done.skipped;
        report.failed = failures.len();
        Ok(report)
    }
}

//! The status row of a run and the rows of its batches, changed only through
//! the RPC functions of `infra/migrations/`, which guard
//! every state change so a batch delivered twice is counted once.

use crate::documents::Target;
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::supabase::{Rest, RestError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Dispatching,
    Running,
    Completed,
    CompletedWithErrors,
    Failed,
}

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::CompletedWithErrors | RunState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Dispatching => "dispatching",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::CompletedWithErrors => "completed_with_errors",
            RunState::Failed => "failed",
        }
    }
}

/// Batch references one call returns at most.
const BATCH_REFS_PAGE: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Pending,
    Queued,
    Running,
    Retrying,
    Done,
    DoneWithFailures,
    Failed,
}

impl BatchState {
    /// The states of a batch that has not ended well: `failed` too, since a
    /// failed batch can still be retried.
    pub const UNFINISHED: [BatchState; 5] = [
        BatchState::Pending,
        BatchState::Queued,
        BatchState::Running,
        BatchState::Retrying,
        BatchState::Failed,
    ];

    pub fn is_done(self) -> bool {
        matches!(self, BatchState::Done | BatchState::DoneWithFailures)
    }
}

/// A run's status row as stored, plus the failures `backfill status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunStatus {
    pub id: RunId,
    pub params: Value,
    pub archive: Option<String>,
    pub state: RunState,
    pub cursor_id: Option<DocumentId>,
    pub next_seq: u32,
    pub total_documents: u64,
    pub total_batches: u64,
    pub batches_done: u64,
    pub batches_failed: u64,
    pub documents_embedded: u64,
    pub documents_skipped: u64,
    pub documents_failed: u64,
    pub tokens_used: u64,
    /// Every token the API charged, failed and duplicated attempts too;
    /// `actual_cost_usd` is its price.
    #[serde(default)]
    pub tokens_billed: u64,
    pub estimated_tokens: u64,
    pub estimated_cost_usd: f64,
    pub actual_cost_usd: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The database's clock when this was read, for rates and ETAs.
    pub now: DateTime<Utc>,
    #[serde(default)]
    pub failed_batches: Vec<FailedBatch>,
    #[serde(default)]
    pub failed_documents: Vec<FailedDocument>,
}

impl RunStatus {
    pub fn documents_processed(&self) -> u64 {
        self.documents_embedded + self.documents_skipped + self.documents_failed
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedBatch {
    pub seq: BatchSeq,
    pub first_id: DocumentId,
    pub last_id: DocumentId,
    pub state: BatchState,
    pub attempts: u32,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailedDocument {
    pub id: DocumentId,
    pub reason: String,
}

/// What `create_run` found: the run, or the active run that blocks it.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum CreatedRun {
    Conflict { conflict: Box<RunStatus> },
    Run(Box<RunStatus>),
}

/// Enough of a batch to queue its message again.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct BatchRef {
    pub seq: BatchSeq,
    pub first_id: DocumentId,
    pub last_id: DocumentId,
}

/// A batch about to be recorded by the dispatcher.
#[derive(Clone, Debug, Serialize)]
pub struct NewBatch {
    pub seq: BatchSeq,
    pub ids: Vec<DocumentId>,
    pub estimated_tokens: u64,
}

/// What a worker learns when it starts on a message.
#[derive(Clone, Debug, Deserialize)]
pub struct BatchStart {
    pub run_found: bool,
    #[serde(default)]
    pub batch_found: bool,
    #[serde(default)]
    pub params: Option<Value>,
    #[serde(default)]
    pub state: Option<BatchState>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub ids: Vec<DocumentId>,
    /// Another delivery holds the batch until `leased_until`.
    #[serde(default)]
    pub leased: bool,
    #[serde(default)]
    pub leased_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Completion {
    /// False when the batch had already ended: nothing was counted again.
    pub counted: bool,
    pub written: u64,
    #[serde(default)]
    pub skipped: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FailureRecord {
    pub counted: bool,
}

/// A vector to write. The embedding travels as pgvector's text form inside a
/// JSON string, so the REST server and Postgres read one string instead of
/// 1,536 JSON numbers (which jsonb holds as `numeric`): the bench measured
/// parsing those numbers as most of their CPU. Each float is written in its
/// shortest form that reads back as the same `f32`.
#[derive(Clone, Debug, Serialize)]
pub struct VectorRow<'a> {
    pub id: DocumentId,
    #[serde(serialize_with = "vector_text")]
    pub embedding: &'a [f32],
}

fn vector_text<S: serde::Serializer>(v: &&[f32], s: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write;
    let mut text = String::with_capacity(v.len() * 12 + 2);
    text.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "{x}");
    }
    text.push(']');
    s.serialize_str(&text)
}

#[derive(Clone, Debug)]
pub struct StatusStore {
    rest: Rest,
}

impl StatusStore {
    pub fn new(rest: Rest) -> Self {
        Self { rest }
    }

    /// Creates the run, or finds it when it exists; unless `force`, refuses
    /// while another run over an overlapping archive filter is active.
    pub async fn create_run(
        &self,
        run: RunId,
        params: &Value,
        archive: Option<&str>,
        price_per_million_tokens: f64,
        force: bool,
    ) -> Result<CreatedRun, RestError> {
        self.rest
            .rpc(
                "backfill_create_run",
                &json!({
                    "p_run_id": run,
                    "p_params": params,
                    "p_archive": archive,
                    "p_price_per_million_tokens": price_per_million_tokens,
                    "p_force": force,
                }),
            )
            .await
    }

    /// Records why a dispatch stopped, leaving the run continuable.
    pub async fn note_run_error(&self, run: RunId, error: &str) -> Result<RunStatus, RestError> {
        self.rest
            .rpc(
                "backfill_note_run_error",
                &json!({ "p_run_id": run, "p_error": error }),
            )
            .await
    }

    /// Every batch of the run in one of `states`, in order, paged so that no
    /// answer is longer than the API's row cap could allow.
    pub async fn batches_in(
        &self,
        run: RunId,
        states: &[BatchState],
    ) -> Result<Vec<BatchRef>, RestError> {
        let mut all: Vec<BatchRef> = Vec::new();
        loop {
            let page: Vec<BatchRef> = self
                .rest
                .rpc(
                    "backfill_batch_refs",
                    &json!({
                        "p_run_id": run,
                        "p_states": states,
                        "p_after_seq": all.last().map(|b| b.seq),
                        "p_max_rows": BATCH_REFS_PAGE,
                    }),
                )
                .await?;
            let full = page.len() as u32 == BATCH_REFS_PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Takes the batches that ended badly out of the counters, back to
    /// `queued`, before their messages are sent again; how many it reopened.
    pub async fn reopen_batches(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, RestError> {
        self.rest
            .rpc(
                "backfill_reopen_batches",
                &json!({ "p_run_id": run, "p_seqs": seqs }),
            )
            .await
    }

    /// Puts a run whose dispatch an older version ended `failed` back to
    /// `dispatching`, so it can be continued.
    pub async fn resume_dispatch(&self, run: RunId) -> Result<RunStatus, RestError> {
        self.rest
            .rpc("backfill_resume_dispatch", &json!({ "p_run_id": run }))
            .await
    }

    /// Records a page of batches and the cursor after them, atomically.
    pub async fn add_batches(
        &self,
        run: RunId,
        batches: &[NewBatch],
        cursor: DocumentId,
    ) -> Result<RunStatus, RestError> {
        self.rest
            .rpc(
                "backfill_add_batches",
                &json!({ "p_run_id": run, "p_batches": batches, "p_cursor_id": cursor }),
            )
            .await
    }

    pub async fn mark_queued(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, RestError> {
        self.rest
            .rpc(
                "backfill_mark_queued",
                &json!({ "p_run_id": run, "p_seqs": seqs }),
            )
            .await
    }

    pub async fn finish_dispatch(&self, run: RunId) -> Result<RunStatus, RestError> {
        self.rest
            .rpc("backfill_finish_dispatch", &json!({ "p_run_id": run }))
            .await
    }

    /// Starts a delivery of the batch: takes its lease for `lease` unless
    /// another delivery holds it, and reopens a failed batch on a fresh message.
    pub async fn begin_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        receive_count: u32,
        lease: std::time::Duration,
    ) -> Result<BatchStart, RestError> {
        self.rest
            .rpc(
                "backfill_begin_batch",
                &json!({
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_receive_count": receive_count,
                    "p_lease_seconds": lease.as_secs_f64().ceil() as u64,
                }),
            )
            .await
    }

    /// Writes vectors to the batch's rows that still lack one, ahead of its
    /// completion; safe to repeat.
    pub async fn write_vectors(
        &self,
        target: &Target,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
    ) -> Result<u64, RestError> {
        #[derive(Deserialize)]
        struct Written {
            written: u64,
        }
        let w: Written = self
            .rest
            .rpc(
                "backfill_write_vectors",
                &json!({
                    "p_target": target,
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_vectors": vectors,
                }),
            )
            .await?;
        Ok(w.written)
    }

    /// Writes the vectors, ends the batch and advances the run in one transaction.
    pub async fn complete_batch(
        &self,
        target: &Target,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, RestError> {
        self.rest
            .rpc(
                "backfill_complete_batch",
                &json!({
                    "p_target": target,
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_vectors": vectors,
                    "p_tokens": tokens,
                    "p_failures": failures,
                }),
            )
            .await
    }

    pub async fn fail_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        error: &str,
        permanent: bool,
        tokens_billed: u64,
    ) -> Result<FailureRecord, RestError> {
        self.rest
            .rpc(
                "backfill_fail_batch",
                &json!({
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_error": error,
                    "p_permanent": permanent,
                    "p_tokens_billed": tokens_billed,
                }),
            )
            .await
    }

    /// The run, or the latest run when `run` is `None`; `None` when there is none.
    pub async fn run_status(&self, run: Option<RunId>) -> Result<Option<RunStatus>, RestError> {
        self.rest
            .rpc("backfill_run_status", &json!({ "p_run_id": run }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_travel_as_text_that_reads_back_exactly() {
        let v = [0.1f32, -1.0, 3.0e-8, 0.33333334, f32::MIN_POSITIVE];
        let row = VectorRow {
            id: DocumentId(7),
            embedding: &v,
        };
        let json = serde_json::to_value(&row).unwrap();
        let text = json["embedding"].as_str().unwrap();
        let back: Vec<f32> = text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(back, v);
        assert_eq!(json["id"], 7);
    }
}

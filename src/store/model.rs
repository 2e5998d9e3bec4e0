//! What the store holds and answers: documents and their pages, a run's
//! status row and its batches. Every implementation of [`super::Store`]
//! speaks these types.

use crate::ids::{BatchSeq, DocumentId, RunId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the documents live; names are configuration and travel to the SQL
/// functions, which quote them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub schema: String,
    pub table: String,
    pub id: String,
    pub content: String,
    pub archive: String,
    pub embedding: String,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            table: "lovdata_documents".into(),
            id: "id".into(),
            content: "content".into(),
            archive: "archive".into(),
            embedding: "embedding".into(),
        }
    }
}

/// One row of a keyset page: the id and the stored size of its text.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct PagedDocument {
    pub id: DocumentId,
    pub bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Page {
    pub rows: Vec<PagedDocument>,
    /// Where the next page starts: past the last row, or past every row the
    /// call read when it found fewer than asked (`stale` and `all` read a
    /// bounded number of rows a call).
    #[serde(default)]
    pub last_id: Option<DocumentId>,
    /// Rows lie beyond this page.
    pub more: bool,
}

impl Page {
    /// Where the next page starts.
    pub fn next_after(&self) -> Option<DocumentId> {
        self.last_id.or(self.rows.last().map(|r| r.id))
    }
}

/// A document still missing a vector, its text cut to the prefix that holds
/// the provider's input limit.
#[derive(Clone, Debug, Deserialize)]
pub struct Document {
    pub id: DocumentId,
    #[serde(default)]
    pub content: Option<String>,
    /// sha256 of the whole stored text, hex: the write checks the row still
    /// holds that text, so a vector never lands on a text it was not made from.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// One bounded answer of texts; `more` when ids lie beyond it.
#[derive(Clone, Debug, Deserialize)]
pub struct Fetched {
    pub documents: Vec<Document>,
    pub more: bool,
}

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
    /// Of the documents embedded, those given the vector of another row of
    /// the same text, and the tokens that saved.
    #[serde(default)]
    pub documents_copied: u64,
    #[serde(default)]
    pub tokens_saved: u64,
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
    /// Rows given a vector by this batch, copies included.
    pub written: u64,
    /// Of those, copies of another row's vector.
    #[serde(default)]
    pub copied: u64,
    #[serde(default)]
    pub skipped: u64,
}

/// A failure as the status row counted it: the documents are counted only
/// when `counted` (the failure ended the batch, once).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct FailureRecord {
    pub counted: bool,
    #[serde(default)]
    pub documents_failed: u64,
    #[serde(default)]
    pub documents_embedded: u64,
}

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

/// Which rows a run embeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// Rows without a vector: the first backfill.
    #[default]
    Missing,
    /// Those, and rows whose vector was made from another text or with
    /// another model, dimensions or long-text policy.
    Stale,
    /// Every row, as for a new model.
    All,
}

/// What becomes of a text longer than the model's input limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongText {
    /// Its first tokens, up to the limit, are embedded.
    #[default]
    Truncate,
    /// Every chunk is embedded and the vectors averaged, weighted by tokens.
    Average,
}

/// How a run's texts reach the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A request per group of texts, answered at once, at the list price.
    #[default]
    Direct,
    /// Jobs through the provider's Batch API: half the price, a separate
    /// quota, answered within a day.
    Batch,
}

macro_rules! named_values {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($variant),)+
                    other => Err(format!(
                        "{} must be one of {}, not {other:?}",
                        $what,
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_values!(Select, "select", Select::Missing => "missing", Select::Stale => "stale", Select::All => "all");
named_values!(LongText, "long_text", LongText::Truncate => "truncate", LongText::Average => "average");
named_values!(Mode, "mode", Mode::Direct => "direct", Mode::Batch => "batch");

/// What a vector is made with: a vector stays current while all of this,
/// and its text, are what they were when it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorSpec {
    pub model: String,
    pub dimensions: u32,
    #[serde(default)]
    pub long_text: LongText,
}

/// A run's rows and the vectors it wants, as the SQL functions read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub select: Select,
    #[serde(flatten)]
    pub spec: VectorSpec,
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub total: u64,
    pub with_embeddings: u64,
    pub without_embeddings: u64,
    /// Rows without a vector whose text is empty: they cannot get one.
    pub empty_content: u64,
    /// Vectors without provenance, made elsewhere: `backfill adopt` records them.
    #[serde(default)]
    pub unknown: u64,
    /// Vectors made with another model, dimensions or long-text policy.
    #[serde(default)]
    pub stale_model: u64,
    /// Vectors made from a text the row no longer holds.
    #[serde(default)]
    pub stale_text: u64,
    #[serde(default)]
    pub current: u64,
    /// Of the whole; a step's answer has none.
    #[serde(default)]
    pub coverage_percent: f64,
}

impl Coverage {
    pub fn add(&mut self, step: &Coverage) {
        self.total += step.total;
        self.with_embeddings += step.with_embeddings;
        self.without_embeddings += step.without_embeddings;
        self.empty_content += step.empty_content;
        self.unknown += step.unknown;
        self.stale_model += step.stale_model;
        self.stale_text += step.stale_text;
        self.current += step.current;
        self.coverage_percent = if self.total == 0 {
            100.0
        } else {
            (self.with_embeddings as f64 * 10_000.0 / self.total as f64).round() / 100.0
        };
    }
}

/// The coverage of one bounded range of rows, and where the next begins.
#[derive(Clone, Debug, Deserialize)]
pub struct CoverageStep {
    #[serde(flatten)]
    pub counts: Coverage,
    pub last_id: Option<DocumentId>,
    pub more: bool,
}

/// What `backfill adopt` recorded over one bounded range of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub adopted: u64,
    /// Vectors of other dimensions than the ones named: not adopted.
    pub wrong_dimensions: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AdoptStep {
    #[serde(flatten)]
    pub adoption: Adoption,
    pub last_id: Option<DocumentId>,
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
    /// The [`Document::sha256`] of the text it was made from.
    pub sha256: &'a str,
    /// Inputs embedded for it, and their tokens: its provenance.
    pub chunks: u32,
    pub tokens: u64,
    pub source: VectorSource,
}

/// Where a written vector came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorSource {
    /// The API, for this text.
    Api,
    /// Another row of the same text, embedded once.
    Copy,
}

/// What copying vectors from rows of the same text did for a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Copied {
    pub copied: u64,
    /// The tokens those texts cost when they were embedded.
    pub tokens_saved: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_travel_as_text_that_reads_back_exactly() {
        let v = [0.1f32, -1.0, 3.0e-8, 0.33333334, f32::MIN_POSITIVE];
        let row = VectorRow {
            id: DocumentId(7),
            embedding: &v,
            sha256: "ab",
            chunks: 1,
            tokens: 3,
            source: VectorSource::Api,
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

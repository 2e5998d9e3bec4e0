//! Batch mode's jobs as the store keeps them: one input file and one Batch
//! API batch each, holding a run of consecutive batches.

use super::StoreError;
use crate::ids::{BatchSeq, DocumentId, JobSeq, RunId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The store's part in batch mode: the dispatcher fills jobs, the poller
/// takes, updates and ends them. Every [`super::Store`] is one.
#[async_trait]
pub trait JobStore {
    /// Batch mode: puts batches in the run's jobs in seq order, a job
    /// holding at most `max_documents`; takes new batches, and those coming
    /// back from `from_job` or from a job that ended. Once the run has
    /// dispatched, its open job is ready. How many it placed.
    async fn queue_in_jobs(
        &self,
        run: RunId,
        seqs: &[BatchSeq],
        max_documents: u32,
        from_job: Option<JobSeq>,
    ) -> Result<u64, StoreError>;

    /// Up to `max` jobs of runs over this store's table (of `run` alone,
    /// when given) to look at, submitted ones first, and the jobs and
    /// estimated tokens of `model` at the provider.
    async fn jobs_due(
        &self,
        model: &str,
        run: Option<RunId>,
        max: u32,
    ) -> Result<JobsDue, StoreError>;

    /// Takes the job for `lease` unless another poller holds it.
    async fn begin_job(
        &self,
        run: RunId,
        job: JobSeq,
        lease: Duration,
    ) -> Result<JobStart, StoreError>;

    /// Up to `max_rows` of the job's batches that have not ended, after `after`.
    async fn job_batches(
        &self,
        run: RunId,
        job: JobSeq,
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<JobBatch>, StoreError>;

    /// Records what each batch's lines of the job's input file hold.
    async fn save_plans(
        &self,
        run: RunId,
        job: JobSeq,
        plans: &[(BatchSeq, Value)],
    ) -> Result<u64, StoreError>;

    /// Moves the job's batches from `from` on to a new ready job.
    async fn split_job(
        &self,
        run: RunId,
        job: JobSeq,
        from: BatchSeq,
    ) -> Result<JobSeq, StoreError>;

    /// Records what the poller learned of the job, ending its lease.
    async fn update_job(
        &self,
        run: RunId,
        job: JobSeq,
        update: &JobUpdate,
    ) -> Result<Job, StoreError>;

    /// Fails the job's open batches for good with `error`, and the job.
    async fn fail_job(&self, run: RunId, job: JobSeq, error: &str) -> Result<u64, StoreError>;

    /// The run's jobs, the latest 1,000.
    async fn run_jobs(&self, run: RunId) -> Result<Vec<Job>, StoreError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still taking batches from the dispatch.
    Open,
    /// Complete, waiting to be submitted (or for the account's queue).
    Ready,
    /// At the provider, being watched.
    Submitted,
    /// Collected: every batch of it ended.
    Done,
    /// Refused or cancelled by the provider: its batches failed with the reason.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Open => "open",
            JobState::Ready => "ready",
            JobState::Submitted => "submitted",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// A job's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub run_id: RunId,
    pub seq: JobSeq,
    pub state: JobState,
    pub documents: u64,
    pub estimated_tokens: u64,
    pub input_file_id: Option<String>,
    /// The provider's id of the job, once it was created.
    pub batch_id: Option<String>,
    /// The provider's status of the job as last seen.
    pub provider_status: Option<String>,
    pub lines_total: u64,
    pub lines_completed: u64,
    pub lines_failed: u64,
    /// Jobs at the provider when this one was created.
    #[serde(default)]
    pub queued_before: Option<u64>,
    /// Jobs at the provider when it refused this one for its queued-token
    /// limit: this one waits until fewer are.
    pub blocked_behind: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub submitting_since: Option<DateTime<Utc>>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The database's clock when the row was read, for ages.
    pub now: DateTime<Utc>,
}

/// A job the poller has to look at, with what decides whether a ready one
/// may go to the provider yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct JobRef {
    pub run_id: RunId,
    pub seq: JobSeq,
    pub state: JobState,
    #[serde(default)]
    pub estimated_tokens: u64,
    #[serde(default)]
    pub blocked_behind: Option<u64>,
}

/// The jobs to look at, and what of the model's queue the account holds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct JobsDue {
    pub jobs: Vec<JobRef>,
    /// Jobs of the model at the provider.
    pub queued_jobs: u64,
    /// Their estimated tokens.
    pub queued_tokens: u64,
}

/// A job taken (or found held) by the poller, with its run's parameters.
#[derive(Clone, Debug, Deserialize)]
pub struct JobStart {
    pub job: Option<Job>,
    #[serde(default)]
    pub params: Option<Value>,
    /// Another poller holds it.
    #[serde(default)]
    pub leased: bool,
}

/// A batch of a job that has not ended: its ids, and once the job's file was
/// written, its plan (what its lines hold).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct JobBatch {
    pub seq: BatchSeq,
    pub first_id: DocumentId,
    pub last_id: DocumentId,
    pub ids: Vec<DocumentId>,
    pub plan: Option<Value>,
}

/// What the poller learned of a job: each field given sets its column
/// (`Some(None)` clears it). Giving a state ends the poller's lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_file_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines_completed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines_failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_behind: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

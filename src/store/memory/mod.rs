//! [`Store`] in memory, for unit tests of the worker and the dispatcher: the
//! rules of the SQL functions of `infra/migrations/idempotent/`, each call
//! under one lock as each function is one transaction, so a test meets the
//! same guards (leases, counted-once completion, conflicting runs) and the
//! same errors as against the database, without one.
//!
//! What no function reads back (a batch's timestamps and tokens) is not
//! kept, and the vector column's dimension is not checked:
//! tests use short vectors. A provenance's `embedded_at` is kept, since the
//! copy of a vector takes the latest of its donors. Texts are
//! hashed as the SQL hashes them (sha256 of the whole text as UTF-8, a NULL
//! text as the empty one), so a test's hashes are the database's.

#[cfg(test)]
mod tests;

mod batches;
mod documents;
mod jobs;
mod provenance;
mod runs;
mod state;
mod vectors;

pub use provenance::ProvenanceInfo;

use super::model::*;

use super::postgrest::FETCH_MAX_BYTES;
use super::vectors::*;
use super::{Job, JobBatch, JobStart, JobStore, JobUpdate, JobsDue, Store, StoreError};
use crate::ids::{BatchSeq, DocumentId, JobSeq, RunId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use state::{Row, State};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The store of unit tests: documents, runs and batches behind one lock, and
/// helpers to set up and read back what the SQL would hold.
#[derive(Debug)]
pub struct MemoryStore {
    target: Target,
    /// Text one fetch returns at most, as `p_max_bytes`: small in a test, so
    /// a batch comes in several answers.
    fetch_budget: u64,
    state: Mutex<State>,
}

/// A batch as a test sees it, to check what a worker or dispatcher did to it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchInfo {
    pub state: BatchState,
    pub attempts: u32,
    pub leased_until: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            target: Target::default(),
            fetch_budget: FETCH_MAX_BYTES,
            state: Mutex::default(),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets a test force a batch's texts into several fetches.
    pub fn with_fetch_budget(mut self, bytes: u64) -> Self {
        self.fetch_budget = bytes;
        self
    }

    /// Adds a document without a vector, or replaces the row of that id.
    pub fn insert_document(&self, id: DocumentId, archive: Option<&str>, content: Option<&str>) {
        self.state().documents.insert(
            id,
            Row {
                archive: archive.map(str::to_owned),
                content: content.map(str::to_owned),
                embedding: None,
            },
        );
    }

    /// Changes a document's text behind the run's back, as an editor would:
    /// its vector and provenance stay, so the vector is now stale.
    pub fn set_content(&self, id: DocumentId, content: Option<&str>) {
        if let Some(row) = self.state().documents.get_mut(&id) {
            row.content = content.map(str::to_owned);
        }
    }

    /// Sets or clears a vector behind the run's back, as another writer
    /// would: the race that "only rows still needing a vector" guards. Its
    /// provenance, if any, stays what it was, as no writer but the SQL
    /// functions touches `backfill_provenance`.
    pub fn set_embedding(&self, id: DocumentId, embedding: Option<Vec<f32>>) {
        if let Some(row) = self.state().documents.get_mut(&id) {
            row.embedding = embedding;
        }
    }

    /// The vector stored for the document, to check what was written.
    pub fn embedding_of(&self, id: DocumentId) -> Option<Vec<f32>> {
        self.state()
            .documents
            .get(&id)
            .and_then(|row| row.embedding.clone())
    }

    /// The provenance recorded for the document's vector, if any.
    pub fn provenance_of(&self, id: DocumentId) -> Option<ProvenanceInfo> {
        self.state().provenance.get(&id).map(|p| p.info())
    }

    /// The batch's row, which no [`Store`] call returns whole.
    pub fn batch(&self, run: RunId, seq: BatchSeq) -> Option<BatchInfo> {
        let state = self.state();
        let b = state.run(run)?.batches.get(&seq)?;
        Some(BatchInfo {
            state: b.state,
            attempts: b.attempts,
            leased_until: b.leased_until,
            error: b.error.clone(),
        })
    }

    /// Ends a batch's lease now, as if its holder's invocation had died and
    /// the time had passed, so a test need not wait out a real lease.
    pub fn expire_lease(&self, run: RunId, seq: BatchSeq) {
        let mut state = self.state();
        if let Some(b) = state.run_mut(run).and_then(|r| r.batches.get_mut(&seq)) {
            b.leased_until = b.leased_until.map(|_| Utc::now());
        }
    }

    /// The same for a job's poller.
    pub fn expire_job_lease(&self, run: RunId, job: JobSeq) {
        let mut state = self.state();
        if let Some(j) = state.run_mut(run).and_then(|r| r.jobs.get_mut(&job)) {
            j.leased_until = j.leased_until.map(|_| Utc::now());
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every call checks its arguments before it changes anything, so a
        // panic under the lock cannot have left a change half made.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn target(&self) -> &Target {
        &self.target
    }

    async fn page(
        &self,
        selection: &Selection,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<Page, StoreError> {
        self.state().page(selection, archive, after, max_rows)
    }

    async fn fetch_missing(
        &self,
        selection: &Selection,
        run: Option<RunId>,
        ids: &[DocumentId],
        after: Option<DocumentId>,
        max_chars: Option<usize>,
    ) -> Result<Fetched, StoreError> {
        self.state()
            .fetch_missing(selection, run, ids, after, max_chars, self.fetch_budget)
    }

    async fn coverage_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<CoverageStep, StoreError> {
        self.state().coverage_step(spec, archive, after, max_rows)
    }

    async fn adopt_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<AdoptStep, StoreError> {
        self.state().adopt_step(spec, archive, after, max_rows)
    }

    async fn create_run(
        &self,
        run: RunId,
        params: &Value,
        archive: Option<&str>,
        price_per_million_tokens: f64,
        force: bool,
    ) -> Result<CreatedRun, StoreError> {
        Ok(self
            .state()
            .create_run(run, params, archive, price_per_million_tokens, force))
    }

    async fn add_batches(
        &self,
        run: RunId,
        batches: &[NewBatch],
        cursor: DocumentId,
    ) -> Result<RunStatus, StoreError> {
        self.state().add_batches(run, batches, cursor)
    }

    async fn mark_queued(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError> {
        Ok(self.state().mark_queued(run, seqs))
    }

    async fn finish_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError> {
        self.state().finish_dispatch(run)
    }

    async fn note_run_error(&self, run: RunId, error: &str) -> Result<RunStatus, StoreError> {
        self.state().note_run_error(run, error)
    }

    async fn resume_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError> {
        self.state().resume_dispatch(run)
    }

    async fn run_status(&self, run: Option<RunId>) -> Result<Option<RunStatus>, StoreError> {
        Ok(self.state().run_status(run))
    }

    async fn batch_refs(
        &self,
        run: RunId,
        states: &[BatchState],
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<BatchRef>, StoreError> {
        Ok(self.state().batch_refs(run, states, after, max_rows))
    }

    async fn reopen_batches(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError> {
        Ok(self.state().reopen_batches(run, seqs))
    }

    async fn begin_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        receive_count: u32,
        lease: Duration,
    ) -> Result<BatchStart, StoreError> {
        Ok(self.state().begin_batch(run, seq, receive_count, lease))
    }

    async fn copy_vectors(&self, run: RunId, seq: BatchSeq) -> Result<Copied, StoreError> {
        self.state().copy_vectors(run, seq)
    }

    async fn write_vectors(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
    ) -> Result<u64, StoreError> {
        self.state().write_vectors(run, seq, vectors)
    }

    async fn complete_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, StoreError> {
        self.state()
            .complete_batch(run, seq, vectors, tokens, failures)
    }

    async fn fail_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        error: &str,
        permanent: bool,
        tokens_billed: u64,
    ) -> Result<FailureRecord, StoreError> {
        Ok(self
            .state()
            .fail_batch(run, seq, error, permanent, tokens_billed))
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn queue_in_jobs(
        &self,
        run: RunId,
        seqs: &[BatchSeq],
        max_documents: u32,
        from_job: Option<JobSeq>,
    ) -> Result<u64, StoreError> {
        self.state()
            .queue_in_jobs(run, seqs, max_documents, from_job)
    }

    async fn jobs_due(
        &self,
        model: &str,
        run: Option<RunId>,
        max: u32,
    ) -> Result<JobsDue, StoreError> {
        let target = serde_json::to_value(&self.target).unwrap_or_default();
        Ok(self.state().jobs_due(model, &target, run, max))
    }

    async fn begin_job(
        &self,
        run: RunId,
        job: JobSeq,
        lease: Duration,
    ) -> Result<JobStart, StoreError> {
        Ok(self.state().begin_job(run, job, lease))
    }

    async fn job_batches(
        &self,
        run: RunId,
        job: JobSeq,
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<JobBatch>, StoreError> {
        Ok(self.state().job_batches(run, job, after, max_rows))
    }

    async fn save_plans(
        &self,
        run: RunId,
        job: JobSeq,
        plans: &[(BatchSeq, Value)],
    ) -> Result<u64, StoreError> {
        Ok(self.state().save_plans(run, job, plans))
    }

    async fn split_job(
        &self,
        run: RunId,
        job: JobSeq,
        from: BatchSeq,
    ) -> Result<JobSeq, StoreError> {
        self.state().split_job(run, job, from)
    }

    async fn update_job(
        &self,
        run: RunId,
        job: JobSeq,
        update: &JobUpdate,
    ) -> Result<Job, StoreError> {
        self.state().update_job(run, job, update)
    }

    async fn fail_job(&self, run: RunId, job: JobSeq, error: &str) -> Result<u64, StoreError> {
        self.state().fail_job(run, job, error)
    }

    async fn run_jobs(&self, run: RunId) -> Result<Vec<Job>, StoreError> {
        Ok(self.state().run_jobs(run))
    }
}

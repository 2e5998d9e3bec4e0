//! The store: the documents, a run's status row and its batches. The
//! dispatcher, the worker and `backfill status` reach them only through
//! [`Store`]; [`PostgrestStore`] is Supabase's REST API, [`MemoryStore`] the
//! same rules in memory, for unit tests of the logic above it.
//!
//! Every call is bounded (a page, a fetch of at most a few MiB, a chunk of
//! vectors) and safe to repeat: each state change is guarded, so a batch
//! delivered twice is counted once. The loops over bounded answers are
//! written once, on `dyn Store`.

mod error;
mod jobs;
mod memory;
mod model;
mod postgrest;
mod vectors;

pub use error::StoreError;
pub use jobs::*;
pub use memory::{BatchInfo, MemoryStore, ProvenanceInfo};
pub use model::*;
pub use postgrest::PostgrestStore;
pub use vectors::*;

use crate::ids::{BatchSeq, DocumentId, RunId};
use async_trait::async_trait;
use serde_json::Value;
use std::time::Duration;

/// Rows one coverage or adopt step reads: a bounded scan, whatever the
/// table's size, that hashes the texts of the vectors it checks.
pub const COVERAGE_STEP_ROWS: u32 = 10_000;
/// Vectors one write carries at most. With an HNSW index on the column each
/// row written costs milliseconds of index upkeep on a large table (`make
/// bench` measured 1,000 in one statement at 4-9 s against the API's 8 s
/// statement timeout); 100 stay well under it, and under request body limits.
pub const WRITE_CHUNK: usize = 100;

/// Batch references one call returns at most.
const BATCH_REFS_PAGE: u32 = 1000;

#[async_trait]
pub trait Store: JobStore + Send + Sync + std::fmt::Debug {
    /// Where the documents live, recorded with each run.
    fn target(&self) -> &Target;

    /// Up to `max_rows` ids after `after` (keyset order) that need a vector
    /// by `selection` and, when `archive` is given, are in exactly that archive.
    async fn page(
        &self,
        selection: &Selection,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<Page, StoreError>;

    /// Those of `ids` after `after` that still need a vector by `selection`
    /// (for [`Select::All`], one that `run` has not written), with the hash
    /// of each text and the text cut to `max_chars` characters (whole when
    /// `None`), as much as one answer holds.
    async fn fetch_missing(
        &self,
        selection: &Selection,
        run: Option<RunId>,
        ids: &[DocumentId],
        after: Option<DocumentId>,
        max_chars: Option<usize>,
    ) -> Result<Fetched, StoreError>;

    /// The coverage of up to `max_rows` rows after `after`, against `spec`.
    async fn coverage_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<CoverageStep, StoreError>;

    /// Records the provenance of the vectors without one among up to
    /// `max_rows` rows after `after`, as made with `spec` from their texts.
    async fn adopt_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<AdoptStep, StoreError>;

    /// Creates the run, or finds it when it exists; unless `force`, refuses
    /// while another run over an overlapping archive filter is active.
    async fn create_run(
        &self,
        run: RunId,
        params: &Value,
        archive: Option<&str>,
        price_per_million_tokens: f64,
        force: bool,
    ) -> Result<CreatedRun, StoreError>;

    /// Records a page of batches and the cursor after them, atomically.
    async fn add_batches(
        &self,
        run: RunId,
        batches: &[NewBatch],
        cursor: DocumentId,
    ) -> Result<RunStatus, StoreError>;

    /// Confirms batches queued; how many changed.
    async fn mark_queued(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError>;

    /// Ends the run's dispatch: `running`, or finished if every batch has.
    async fn finish_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError>;

    /// Records why a dispatch stopped, leaving the run continuable.
    async fn note_run_error(&self, run: RunId, error: &str) -> Result<RunStatus, StoreError>;

    /// Puts a run whose dispatch an older version ended `failed` back to
    /// `dispatching`, so it can be continued.
    async fn resume_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError>;

    /// The run, or the latest run when `run` is `None`; `None` when there is none.
    async fn run_status(&self, run: Option<RunId>) -> Result<Option<RunStatus>, StoreError>;

    /// Up to `max_rows` batches of the run in one of `states`, after `after`.
    async fn batch_refs(
        &self,
        run: RunId,
        states: &[BatchState],
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<BatchRef>, StoreError>;

    /// Takes the batches that ended badly out of the counters, back to
    /// `queued`, before their messages are sent again; how many it reopened.
    async fn reopen_batches(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError>;

    /// Starts a delivery of the batch: takes its lease for `lease` unless
    /// another delivery holds it, and reopens a failed batch on a fresh message.
    async fn begin_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        receive_count: u32,
        lease: Duration,
    ) -> Result<BatchStart, StoreError>;

    /// Gives the batch's rows that need a vector the vector of another row
    /// of the same text made as the run wants, with no API call.
    async fn copy_vectors(&self, run: RunId, seq: BatchSeq) -> Result<Copied, StoreError>;

    /// Writes vectors to the batch's rows that still lack one, ahead of its
    /// completion; how many it wrote.
    async fn write_vectors(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
    ) -> Result<u64, StoreError>;

    /// Writes the last vectors, ends the batch and advances the run, at once.
    async fn complete_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, StoreError>;

    /// Records a failed delivery: `retrying`, or `failed` when `permanent`.
    async fn fail_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        error: &str,
        permanent: bool,
        tokens_billed: u64,
    ) -> Result<FailureRecord, StoreError>;
}

impl dyn Store + '_ {
    /// Writes a batch's vectors and ends it: every chunk but the last on its
    /// own, the last with the completion, so a batch of up to one chunk is
    /// one call.
    pub async fn write_and_complete(
        &self,
        run: RunId,
        seq: BatchSeq,
        rows: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, StoreError> {
        let last = rows.len().saturating_sub(1) / WRITE_CHUNK * WRITE_CHUNK;
        self.write_all(run, seq, &rows[..last]).await?;
        self.complete_batch(run, seq, &rows[last..], tokens, failures)
            .await
    }

    /// Writes vectors ahead of the batch's completion, a chunk a call.
    pub async fn write_all(
        &self,
        run: RunId,
        seq: BatchSeq,
        rows: &[VectorRow<'_>],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(WRITE_CHUNK) {
            self.write_vectors(run, seq, chunk).await?;
        }
        Ok(())
    }

    /// Hands `each` those of `ids` that still need a vector, with their
    /// texts, in id order, one bounded answer at a time, so a batch of large
    /// texts never sits whole in memory.
    pub async fn for_each_missing(
        &self,
        selection: &Selection,
        run: Option<RunId>,
        ids: &[DocumentId],
        max_chars: Option<usize>,
        mut each: impl FnMut(Document),
    ) -> Result<(), StoreError> {
        let mut after: Option<DocumentId> = None;
        loop {
            let page = self
                .fetch_missing(selection, run, ids, after, max_chars)
                .await?;
            after = page.documents.last().map(|d| d.id);
            page.documents.into_iter().for_each(&mut each);
            if !page.more || after.is_none() {
                return Ok(());
            }
        }
    }

    /// The guide's coverage check, each vector's state against `spec`, in
    /// steps of [`COVERAGE_STEP_ROWS`] rows.
    pub async fn coverage(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
    ) -> Result<Coverage, StoreError> {
        let mut c = Coverage::default();
        let mut after: Option<DocumentId> = None;
        loop {
            let step = self
                .coverage_step(spec, archive, after, COVERAGE_STEP_ROWS)
                .await?;
            c.add(&step.counts);
            if !step.more || step.last_id.is_none() {
                return Ok(c);
            }
            after = step.last_id;
        }
    }

    /// `backfill adopt` over the whole filter, in steps of
    /// [`COVERAGE_STEP_ROWS`] rows.
    pub async fn adopt(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
    ) -> Result<Adoption, StoreError> {
        let mut total = Adoption::default();
        let mut after: Option<DocumentId> = None;
        loop {
            let step = self
                .adopt_step(spec, archive, after, COVERAGE_STEP_ROWS)
                .await?;
            total.adopted += step.adoption.adopted;
            total.wrong_dimensions += step.adoption.wrong_dimensions;
            if !step.more || step.last_id.is_none() {
                return Ok(total);
            }
            after = step.last_id;
        }
    }

    /// Every batch of the run in one of `states`, in order, paged so that no
    /// answer is longer than the API's row cap could allow.
    pub async fn batches_in(
        &self,
        run: RunId,
        states: &[BatchState],
    ) -> Result<Vec<BatchRef>, StoreError> {
        let mut all: Vec<BatchRef> = Vec::new();
        loop {
            let page = self
                .batch_refs(run, states, all.last().map(|b| b.seq), BATCH_REFS_PAGE)
                .await?;
            let full = page.len() as u32 == BATCH_REFS_PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }
}

//! [`Store`] over Supabase's REST API: each call is one RPC to a function of
//! `infra/migrations/idempotent/`, which does the work in one transaction and
//! answers one JSON value (Supabase cuts longer row sets at its "Max rows").

mod client;
mod jobs;

use super::model::*;
use super::vectors::*;
use super::{Store, StoreError};
use crate::config::SupabaseConfig;
use crate::ids::{BatchSeq, DocumentId, RunId};
use async_trait::async_trait;
use client::Rest;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// Text one fetch returns at most (the last document may pass it): a batch of
/// large texts comes in several answers, so the worker's memory stays flat.
pub const FETCH_MAX_BYTES: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct PostgrestStore {
    rest: Rest,
    target: Target,
}

impl PostgrestStore {
    pub fn new(cfg: &SupabaseConfig, target: Target) -> Self {
        Self {
            rest: Rest::new(cfg),
            target,
        }
    }
}

#[async_trait]
impl Store for PostgrestStore {
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
        self.rest
            .rpc(
                "backfill_page_documents",
                &json!({
                    "p_target": self.target,
                    "p_spec": selection,
                    "p_archive": archive,
                    "p_after_id": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    async fn fetch_missing(
        &self,
        selection: &Selection,
        run: Option<RunId>,
        ids: &[DocumentId],
        after: Option<DocumentId>,
        max_chars: Option<usize>,
    ) -> Result<Fetched, StoreError> {
        self.rest
            .rpc(
                "backfill_fetch_documents",
                &json!({
                    "p_target": self.target,
                    "p_spec": selection,
                    "p_run_id": run,
                    "p_ids": ids,
                    "p_after_id": after,
                    "p_max_chars": max_chars,
                    "p_max_bytes": FETCH_MAX_BYTES,
                }),
            )
            .await
    }

    async fn coverage_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<CoverageStep, StoreError> {
        self.rest
            .rpc(
                "backfill_coverage",
                &json!({
                    "p_target": self.target,
                    "p_spec": spec,
                    "p_archive": archive,
                    "p_after_id": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    async fn adopt_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<AdoptStep, StoreError> {
        self.rest
            .rpc(
                "backfill_adopt",
                &json!({
                    "p_target": self.target,
                    "p_spec": spec,
                    "p_archive": archive,
                    "p_after_id": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    async fn create_run(
        &self,
        run: RunId,
        params: &Value,
        archive: Option<&str>,
        price_per_million_tokens: f64,
        force: bool,
    ) -> Result<CreatedRun, StoreError> {
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

    async fn add_batches(
        &self,
        run: RunId,
        batches: &[NewBatch],
        cursor: DocumentId,
    ) -> Result<RunStatus, StoreError> {
        self.rest
            .rpc(
                "backfill_add_batches",
                &json!({ "p_run_id": run, "p_batches": batches, "p_cursor_id": cursor }),
            )
            .await
    }

    async fn mark_queued(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError> {
        self.rest
            .rpc(
                "backfill_mark_queued",
                &json!({ "p_run_id": run, "p_seqs": seqs }),
            )
            .await
    }

    async fn finish_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError> {
        self.rest
            .rpc("backfill_finish_dispatch", &json!({ "p_run_id": run }))
            .await
    }

    async fn note_run_error(&self, run: RunId, error: &str) -> Result<RunStatus, StoreError> {
        self.rest
            .rpc(
                "backfill_note_run_error",
                &json!({ "p_run_id": run, "p_error": error }),
            )
            .await
    }

    async fn resume_dispatch(&self, run: RunId) -> Result<RunStatus, StoreError> {
        self.rest
            .rpc("backfill_resume_dispatch", &json!({ "p_run_id": run }))
            .await
    }

    async fn run_status(&self, run: Option<RunId>) -> Result<Option<RunStatus>, StoreError> {
        self.rest
            .rpc("backfill_run_status", &json!({ "p_run_id": run }))
            .await
    }

    async fn batch_refs(
        &self,
        run: RunId,
        states: &[BatchState],
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<BatchRef>, StoreError> {
        self.rest
            .rpc(
                "backfill_batch_refs",
                &json!({
                    "p_run_id": run,
                    "p_states": states,
                    "p_after_seq": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    async fn reopen_batches(&self, run: RunId, seqs: &[BatchSeq]) -> Result<u64, StoreError> {
        self.rest
            .rpc(
                "backfill_reopen_batches",
                &json!({ "p_run_id": run, "p_seqs": seqs }),
            )
            .await
    }

    async fn begin_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        receive_count: u32,
        lease: Duration,
    ) -> Result<BatchStart, StoreError> {
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

    async fn copy_vectors(&self, run: RunId, seq: BatchSeq) -> Result<Copied, StoreError> {
        self.rest
            .rpc(
                "backfill_copy_vectors",
                &json!({ "p_target": self.target, "p_run_id": run, "p_seq": seq }),
            )
            .await
    }

    async fn write_vectors(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
    ) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Written {
            written: u64,
        }
        let w: Written = self
            .rest
            .rpc(
                "backfill_write_vectors",
                &json!({
                    "p_target": self.target,
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_vectors": vectors,
                }),
            )
            .await?;
        Ok(w.written)
    }

    async fn complete_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, StoreError> {
        self.rest
            .rpc(
                "backfill_complete_batch",
                &json!({
                    "p_target": self.target,
                    "p_run_id": run,
                    "p_seq": seq,
                    "p_vectors": vectors,
                    "p_tokens": tokens,
                    "p_failures": failures,
                }),
            )
            .await
    }

    async fn fail_batch(
        &self,
        run: RunId,
        seq: BatchSeq,
        error: &str,
        permanent: bool,
        tokens_billed: u64,
    ) -> Result<FailureRecord, StoreError> {
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
}

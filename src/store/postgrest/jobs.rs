//! Batch mode's jobs over Supabase's REST API: one RPC each, to the
//! functions of `infra/migrations/idempotent/005_jobs.sql`.

use super::PostgrestStore;
use crate::ids::{BatchSeq, JobSeq, RunId};
use crate::store::jobs::*;
use crate::store::StoreError;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;

#[async_trait]
impl JobStore for PostgrestStore {
    async fn queue_in_jobs(
        &self,
        run: RunId,
        seqs: &[BatchSeq],
        max_documents: u32,
        from_job: Option<JobSeq>,
    ) -> Result<u64, StoreError> {
        self.rest
            .rpc(
                "backfill_queue_in_jobs",
                &json!({
                    "p_run_id": run,
                    "p_seqs": seqs,
                    "p_max_documents": max_documents,
                    "p_from_job": from_job,
                }),
            )
            .await
    }

    async fn jobs_due(
        &self,
        model: &str,
        run: Option<RunId>,
        max: u32,
    ) -> Result<JobsDue, StoreError> {
        self.rest
            .rpc(
                "backfill_jobs_due",
                &json!({
                    "p_model": model,
                    "p_target": self.target,
                    "p_run_id": run,
                    "p_max": max,
                }),
            )
            .await
    }

    async fn begin_job(
        &self,
        run: RunId,
        job: JobSeq,
        lease: Duration,
    ) -> Result<JobStart, StoreError> {
        self.rest
            .rpc(
                "backfill_begin_job",
                &json!({
                    "p_run_id": run,
                    "p_seq": job,
                    "p_lease_seconds": lease.as_secs_f64().ceil() as u64,
                }),
            )
            .await
    }

    async fn job_batches(
        &self,
        run: RunId,
        job: JobSeq,
        after: Option<BatchSeq>,
        max_rows: u32,
    ) -> Result<Vec<JobBatch>, StoreError> {
        self.rest
            .rpc(
                "backfill_job_batches",
                &json!({
                    "p_run_id": run,
                    "p_job": job,
                    "p_after_seq": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    async fn save_plans(
        &self,
        run: RunId,
        job: JobSeq,
        plans: &[(BatchSeq, Value)],
    ) -> Result<u64, StoreError> {
        let plans: Vec<Value> = plans
            .iter()
            .map(|(seq, plan)| json!({ "seq": seq, "plan": plan }))
            .collect();
        self.rest
            .rpc(
                "backfill_save_plans",
                &json!({ "p_run_id": run, "p_job": job, "p_plans": plans }),
            )
            .await
    }

    async fn split_job(
        &self,
        run: RunId,
        job: JobSeq,
        from: BatchSeq,
    ) -> Result<JobSeq, StoreError> {
        self.rest
            .rpc(
                "backfill_split_job",
                &json!({ "p_run_id": run, "p_seq": job, "p_from_seq": from }),
            )
            .await
    }

    async fn update_job(
        &self,
        run: RunId,
        job: JobSeq,
        update: &JobUpdate,
    ) -> Result<Job, StoreError> {
        self.rest
            .rpc(
                "backfill_update_job",
                &json!({ "p_run_id": run, "p_seq": job, "p_changes": update }),
            )
            .await
    }

    async fn fail_job(&self, run: RunId, job: JobSeq, error: &str) -> Result<u64, StoreError> {
        self.rest
            .rpc(
                "backfill_fail_job",
                &json!({ "p_run_id": run, "p_seq": job, "p_error": error }),
            )
            .await
    }

    async fn run_jobs(&self, run: RunId) -> Result<Vec<Job>, StoreError> {
        self.rest
            .rpc("backfill_run_jobs", &json!({ "p_run_id": run }))
            .await
    }
}

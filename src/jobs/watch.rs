//! Watching a submitted job: what the Batch API says of it decides whether
//! it is still running, is collected (`collect.rs`), waits for
//! room in the account's queue, or fails with the provider's reason.

use super::collect::Collected;
use super::{JobError, Poller, RemoteStatus};
use crate::store::{Job, JobState, JobUpdate, JobsDue};
use crate::worker::Settings;
use tokio::time::Instant;

/// Batches of a job read to find its middle: more than a job of 50,000
/// documents holds at one document a batch would be absurd.
const HALVE_SCAN: u32 = 50_000;

/// How watching a job ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum Watched {
    /// Still at the provider.
    #[default]
    Running,
    /// Collected: its batches ended or went to other jobs.
    Collected(Collected),
    /// The provider's queue was full: back to ready.
    Requeued,
    /// Refused or cancelled: its batches failed with the reason.
    Failed,
}

impl Poller {
    pub(super) async fn watch(
        &self,
        job: &Job,
        settings: &Settings,
        due: &JobsDue,
        deadline: Option<Instant>,
    ) -> Result<Watched, JobError> {
        let Some(batch_id) = job.batch_id.as_deref() else {
            // Submitted with no batch recorded cannot be; start it over.
            self.record(
                job,
                JobUpdate {
                    state: Some(JobState::Ready),
                    ..Default::default()
                },
            )
            .await?;
            return Ok(Watched::Requeued);
        };
        let remote = self.api.retrieve(batch_id).await?;
        let counts = remote.counts();
        let seen = JobUpdate {
            provider_status: Some(remote.status.as_str().into()),
            lines_completed: Some(counts.completed),
            lines_failed: Some(counts.failed),
            ..Default::default()
        };
        match remote.status {
            RemoteStatus::Completed | RemoteStatus::Expired => {
                let collected = self.collect(job, settings, &remote, deadline).await?;
                self.record(
                    job,
                    JobUpdate {
                        state: Some(JobState::Done),
                        ..seen
                    },
                )
                .await?;
                // Everything of them is in the table now; the provider would
                // keep them (and count them against the account's storage)
                // until they expire.
                let files = [
                    &job.input_file_id,
                    &remote.output_file_id,
                    &remote.error_file_id,
                ];
                for file in files.into_iter().flatten() {
                    self.delete_file(file, "a collected job's").await;
                }
                Ok(Watched::Collected(collected))
            }
            RemoteStatus::Failed if remote.over_queue_limit() => {
                // Refused while others were queued, it waits for fewer;
                // refused with none ahead, it is more than the whole queue.
                let behind = job
                    .queued_before
                    .unwrap_or(due.queued_jobs.saturating_sub(1));
                if behind == 0 {
                    return self.halve(job, &remote.reason(), seen).await;
                }
                // The file stays: the job goes again once the queue has room.
                tracing::info!(run_id = %job.run_id, job = job.seq.0, queued_jobs = behind, "the provider's queue is full (token_limit_exceeded); the job waits");
                self.record(
                    job,
                    JobUpdate {
                        state: Some(JobState::Ready),
                        blocked_behind: Some(Some(behind)),
                        error: Some(remote.reason()),
                        ..seen
                    },
                )
                .await?;
                Ok(Watched::Requeued)
            }
            RemoteStatus::Failed | RemoteStatus::Cancelled => {
                let reason = match remote.status {
                    RemoteStatus::Cancelled => format!(
                        "the Batch API batch {} was cancelled (not by this tool); `backfill retry-failed {}` submits its batches again",
                        remote.id, job.run_id
                    ),
                    _ => format!(
                        "the Batch API refused the job's input file: {}; fix the cause, then `backfill retry-failed {}`",
                        remote.reason(),
                        job.run_id
                    ),
                };
                self.record(job, seen).await?;
                self.store.fail_job(job.run_id, job.seq, &reason).await?;
                Ok(Watched::Failed)
            }
            _ => {
                self.record(
                    job,
                    JobUpdate {
                        state: Some(JobState::Submitted),
                        ..seen
                    },
                )
                .await?;
                Ok(Watched::Running)
            }
        }
    }

    /// A job the provider refused with nothing else of ours queued is
    /// larger than the account's whole queue: its second half becomes a
    /// job of its own, and both are written again. A job of one batch
    /// cannot be halved and fails.
    async fn halve(&self, job: &Job, reason: &str, seen: JobUpdate) -> Result<Watched, JobError> {
        let batches = self
            .store
            .job_batches(job.run_id, job.seq, None, HALVE_SCAN)
            .await?;
        if batches.len() < 2 {
            let error = format!(
                "the provider's queue cannot hold even this one batch ({reason}); embed it in direct mode: `backfill retry-failed {}` after dispatching the rest",
                job.run_id
            );
            self.record(job, seen).await?;
            self.store.fail_job(job.run_id, job.seq, &error).await?;
            return Ok(Watched::Failed);
        }
        let moved = self
            .store
            .split_job(job.run_id, job.seq, batches[batches.len() / 2].seq)
            .await?;
        tracing::info!(run_id = %job.run_id, job = job.seq.0, new_job = moved.0, "the job alone is over the provider's queue: halved");
        if let Some(file) = &job.input_file_id {
            self.delete_file(file, "a halved job's").await;
        }
        self.record(
            job,
            JobUpdate {
                state: Some(JobState::Ready),
                input_file_id: Some(None),
                blocked_behind: Some(None),
                error: Some(reason.to_string()),
                ..seen
            },
        )
        .await?;
        Ok(Watched::Requeued)
    }

    /// Best effort: a file left behind expires with the account's retention.
    async fn delete_file(&self, file: &str, whose: &str) {
        if let Err(e) = self.api.delete_file(file).await {
            tracing::warn!(file_id = %file, error = %e, "could not delete {whose} file; it expires with the account's file retention");
        }
    }
}

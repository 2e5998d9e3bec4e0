//! Batch mode: a run's batches go to the provider's Batch API in jobs of up
//! to 50,000 inputs, at half the price and from a quota of their own, and
//! come back within a day. The dispatcher fills the jobs ([`Store::queue_in_jobs`]);
//! the [`Poller`] does the rest, one bounded tick at a time (a scheduled
//! Lambda, or `backfill work` and `backfill run` locally): it collects the
//! jobs that ended, then submits ready ones while the account's queue has
//! room. Every step is recorded, so a tick may stop anywhere and the next
//! one goes on.

mod api;
mod collect;
mod lines;
mod submit;
mod watch;

pub use api::{BatchApi, RemoteStatus};

use crate::embedder::EmbedError;
use crate::ids::{BatchSeq, JobSeq, RunId};
use crate::inputs::Plan;
use crate::metrics::{Metrics, TickRecord};
use crate::store::{Job, JobRef, JobState, JobUpdate, JobsDue, Mode, RunStatus, Store, StoreError};
use crate::worker::{Settings, Worker, WorkerError};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use submit::Submitted;
use thiserror::Error;
use tokio::time::Instant;
use watch::Watched;

/// The tags of a job's Batch API batch: with them a new attempt finds the
/// batch a crashed one created.
const TAG_RUN: &str = "embed_backfill_run";
const TAG_JOB: &str = "embed_backfill_job";
/// How long a tick without a deadline holds a job: submitting 50,000 texts
/// or collecting their vectors takes minutes.
const LEASE: Duration = Duration::from_secs(900);
/// Jobs one tick looks at, at most.
const JOBS_PER_TICK: u32 = 50;
/// Time kept back from the deadline: a job is not started with less.
const JOB_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Batch API: {0}")]
    Api(#[from] EmbedError),
    #[error(transparent)]
    Run(#[from] WorkerError),
    #[error("an output line of job {job} of run {run} cannot be read: {reason}")]
    Line {
        run: RunId,
        job: JobSeq,
        reason: String,
    },
    #[error("batch {batch} of job {job} of run {run} has no plan of its lines, so its vectors cannot be matched to their rows; `backfill retry-failed {run}` submits it again")]
    NoPlan {
        run: RunId,
        job: JobSeq,
        batch: BatchSeq,
    },
    #[error(
        "EMBEDDING_PROVIDER={0} has no Batch API here; batch mode needs EMBEDDING_PROVIDER=openai"
    )]
    NoBatchApi(&'static str),
    #[error("run {0} does not exist in backfill_runs")]
    UnknownRun(RunId),
}

/// What a batch's lines of a job's input file hold: the inputs of each
/// line (`custom_id` "SEQ-LINE"), and how their vectors make each row's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchPlan {
    pub plan: Plan,
    pub lines: Vec<Range<usize>>,
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    pub submitted: u64,
    /// Ready, waiting for room in the provider's queue.
    pub waiting: u64,
    /// At the provider, not finished yet.
    pub running: u64,
    pub collected: u64,
    /// Batches that ended on collection.
    pub batches_ended: u64,
    /// Batches that went back into a new job.
    pub batches_requeued: u64,
    /// Documents counted embedded by the batches that ended on collection.
    pub documents_embedded: u64,
    /// Tokens of the lines collected.
    pub tokens: u64,
    pub failed: u64,
    /// Jobs left for the next tick (its deadline, or another poller's lease).
    pub left: u64,
    pub errors: Vec<String>,
}

pub struct Poller {
    store: Arc<dyn Store>,
    api: BatchApi,
    worker: Worker,
    /// The account's queued-token limit for the model, when configured.
    queue_tokens: Option<u64>,
    metrics: Metrics,
}

impl Poller {
    /// A poller for the worker's provider, which must have a Batch API.
    pub fn new(
        store: Arc<dyn Store>,
        worker: Worker,
        http: reqwest::Client,
        queue_tokens: Option<u64>,
    ) -> Result<Self, JobError> {
        let provider = worker.provider();
        let target = provider
            .batch_target()
            .ok_or(JobError::NoBatchApi(provider.name()))?;
        Ok(Self {
            store,
            api: BatchApi::new(http, target),
            worker,
            queue_tokens,
            metrics: Metrics::off(),
        })
    }

    /// This poller, writing a metrics record per tick into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Collects the jobs that ended and submits ready ones (of `run` alone,
    /// when given), until `deadline` (less a margin); a job that fails is
    /// recorded and the tick goes on.
    pub async fn tick(
        &self,
        run: Option<RunId>,
        deadline: Option<Instant>,
    ) -> Result<TickReport, JobError> {
        let model = self.api.target().model().to_string();
        let mut due = self.store.jobs_due(&model, run, JOBS_PER_TICK).await?;
        let mut report = TickReport::default();
        let jobs = std::mem::take(&mut due.jobs);
        // A job is not started with less than this left: a minute of a
        // Lambda's 15, a quarter of a short test's.
        let margin = deadline.map_or(JOB_MARGIN, |d| {
            JOB_MARGIN.min(d.saturating_duration_since(Instant::now()) / 4)
        });
        for (i, r) in jobs.iter().enumerate() {
            if deadline.is_some_and(|d| Instant::now() + margin > d) {
                report.left += (jobs.len() - i) as u64;
                break;
            }
            if r.state == JobState::Ready {
                if let Some(reason) = self.no_room(r, &due) {
                    tracing::debug!(run_id = %r.run_id, job = r.seq.0, reason, "job waits for the provider's queue");
                    report.waiting += 1;
                    continue;
                }
            }
            // A poller that dies lets go of its job when its invocation would
            // have ended.
            let lease = deadline.map_or(LEASE, |d| {
                LEASE
                    .min(d.saturating_duration_since(Instant::now()))
                    .max(Duration::from_secs(1))
            });
            let start = self.store.begin_job(r.run_id, r.seq, lease).await?;
            let Some(job) = start.job.filter(|_| !start.leased) else {
                report.left += 1;
                continue;
            };
            let outcome = self
                .handle(&job, start.params.as_ref(), &due, deadline)
                .await;
            match outcome {
                Ok(Handled::Submitted(Submitted::Created)) => {
                    report.submitted += 1;
                    due.queued_jobs += 1;
                    due.queued_tokens += job.estimated_tokens;
                }
                Ok(Handled::Submitted(Submitted::Empty)) => report.collected += 1,
                Ok(Handled::Watched(Watched::Running)) => report.running += 1,
                Ok(Handled::Watched(Watched::Collected(c))) => {
                    report.collected += 1;
                    report.batches_ended += c.batches;
                    report.batches_requeued += c.requeued;
                    report.documents_embedded += c.documents;
                    report.tokens += c.tokens;
                    due.queued_jobs = due.queued_jobs.saturating_sub(1);
                    due.queued_tokens = due.queued_tokens.saturating_sub(job.estimated_tokens);
                }
                Ok(Handled::Watched(Watched::Requeued)) => {
                    report.waiting += 1;
                    due.queued_jobs = due.queued_jobs.saturating_sub(1);
                }
                Ok(Handled::Watched(Watched::Failed)) => report.failed += 1,
                Err(e) => {
                    tracing::warn!(run_id = %job.run_id, job = job.seq.0, error = %e, "job step failed; the next tick tries again");
                    self.release(&job, &e).await;
                    report
                        .errors
                        .push(format!("run {} job {}: {e}", job.run_id, job.seq));
                }
            }
        }
        tracing::info!(
            submitted = report.submitted,
            waiting = report.waiting,
            running = report.running,
            collected = report.collected,
            batches_ended = report.batches_ended,
            batches_requeued = report.batches_requeued,
            documents_embedded = report.documents_embedded,
            tokens = report.tokens,
            failed = report.failed,
            left = report.left,
            errors = report.errors.len(),
            "batch jobs polled"
        );
        self.metrics.write(TickRecord {
            timestamp: SystemTime::now(),
            jobs_submitted: report.submitted,
            jobs_collected: report.collected,
            documents_embedded: report.documents_embedded,
            tokens: report.tokens,
            cost_usd: self.worker.provider().cost_usd(report.tokens, Mode::Batch),
        });
        Ok(report)
    }

    /// Why the account's queue of batch tokens has no room for the job: the
    /// configured limit would be passed, or the provider refused it before
    /// while as many jobs as now were queued. A job alone is always tried.
    fn no_room(&self, job: &JobRef, due: &JobsDue) -> Option<String> {
        if due.queued_jobs == 0 {
            return None;
        }
        if let Some(limit) = self.queue_tokens {
            if due.queued_tokens + job.estimated_tokens > limit {
                return Some(format!(
                    "waiting: {} tokens are queued at the provider, and this job's {} would pass BACKFILL_BATCH_QUEUE_TOKENS={limit}",
                    due.queued_tokens, job.estimated_tokens
                ));
            }
        }
        match job.blocked_behind {
            Some(n) if due.queued_jobs >= n => Some(format!(
                "waiting: the provider refused this job (token_limit_exceeded) while {n} job(s) were queued; {} still are",
                due.queued_jobs
            )),
            _ => None,
        }
    }

    /// Ticks every `every` until the run has finished, handing each tick's
    /// report and the run's status to `each`: batch mode in one process.
    pub async fn drive(
        &self,
        run: RunId,
        every: Duration,
        mut each: impl FnMut(&TickReport, &RunStatus),
    ) -> Result<RunStatus, JobError> {
        loop {
            let report = self.tick(Some(run), None).await?;
            let status = self
                .store
                .run_status(Some(run))
                .await?
                .ok_or(JobError::UnknownRun(run))?;
            each(&report, &status);
            if status.state.is_finished() {
                return Ok(status);
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn handle(
        &self,
        job: &Job,
        params: Option<&serde_json::Value>,
        due: &JobsDue,
        deadline: Option<Instant>,
    ) -> Result<Handled, JobError> {
        let settings = Settings::of(job.run_id, params, self.worker.provider().as_ref())?;
        match job.state {
            JobState::Submitted => Ok(Handled::Watched(
                self.watch(job, &settings, due, deadline).await?,
            )),
            _ => Ok(Handled::Submitted(
                self.submit(job, &settings, due.queued_jobs).await?,
            )),
        }
    }

    /// Records what was learned of the job or done to it.
    async fn record(&self, job: &Job, update: JobUpdate) -> Result<Job, JobError> {
        Ok(self.store.update_job(job.run_id, job.seq, &update).await?)
    }

    /// Ends the lease of a job whose step failed, with why, so the next
    /// tick takes it up again at once.
    async fn release(&self, job: &Job, error: &JobError) {
        let update = JobUpdate {
            state: Some(job.state),
            error: Some(error.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.record(job, update).await {
            tracing::error!(run_id = %job.run_id, job = job.seq.0, error = %e, "could not record a job's failed step; its lease runs out instead");
        }
    }
}

#[cfg(test)]
mod tests;

enum Handled {
    Submitted(Submitted),
    Watched(Watched),
}

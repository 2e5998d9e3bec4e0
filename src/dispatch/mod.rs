//! The dispatcher: pages the ids that still need a vector into batches, records
//! them in the status tables and queues one message per batch. The event and
//! its checks are in `request`, the token estimate in `estimate`.

mod estimate;
mod paging;
mod request;
#[cfg(test)]
mod tests;

pub use request::{
    DispatchCommand, DispatchOptions, DispatchRequest, EventError, DEFAULT_BATCH_SIZE,
    DEFAULT_EMBEDDING_BATCH_SIZE, MAX_BATCH_SIZE, MAX_EMBEDDING_BATCH_SIZE, MAX_HOPS, MAX_JOB_SIZE,
};

use crate::embedder::Provider;
use crate::failpoint;
use crate::ids::{BatchSeq, RunId};
use crate::metrics::{DispatchRecord, Metrics};
use crate::progress;
use crate::queue::{BatchMessage, Queue, QueueError};
use crate::store::BatchRef;
use crate::store::{
    BatchState, Coverage, CreatedRun, Mode, RunState, RunStatus, Selection, Store, StoreError,
    Target, VectorSpec,
};
use paging::Cursor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant, SystemTime};
use thiserror::Error;
use tokio::time::Instant;

/// A run's stored parameters: written by the dispatcher, read back typed by
/// a continuation and by the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    pub options: DispatchOptions,
    pub target: Target,
    /// Runs from before providers were configurable used OpenAI.
    #[serde(default = "openai")]
    pub provider: String,
    pub model: String,
    pub dimensions: u32,
}

fn openai() -> String {
    "openai".into()
}

impl RunParams {
    /// The parameters of a run this tool created; `None` for anything else.
    pub fn read(params: &Value) -> Option<Self> {
        serde_json::from_value(params.clone()).ok()
    }

    /// The vectors the run makes.
    pub fn spec(&self) -> VectorSpec {
        VectorSpec {
            model: self.model.clone(),
            dimensions: self.dimensions,
            long_text: self.options.long_text,
        }
    }

    /// The rows the run takes and the vectors it makes.
    pub fn selection(&self) -> Selection {
        Selection {
            select: self.options.select,
            spec: self.spec(),
        }
    }
}

/// The dispatcher's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchSummary {
    /// Absent for a dry run, which records nothing.
    pub run_id: Option<RunId>,
    pub dry_run: bool,
    pub archive: Option<String>,
    pub documents: u64,
    pub batches: u64,
    pub estimated_tokens: u64,
    pub estimated_cost_usd: f64,
    /// False when the dispatch stopped at its deadline: continue it with
    /// `{"continue_run": run_id}`.
    pub complete: bool,
    /// Batches a continuation sent again: recorded, but never confirmed queued.
    #[serde(default)]
    pub resent_batches: u64,
    /// A dry run's count of the filter's rows by the state of their vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// A dry run's cost in each mode the provider offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<Costs>,
}

/// What the same tokens cost in each mode; `None` where the provider has no
/// such mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub direct_usd: Option<f64>,
    pub batch_usd: Option<f64>,
}

impl Costs {
    pub fn of(provider: &dyn Provider, tokens: u64) -> Self {
        let at = |mode| {
            provider
                .price_per_million_tokens(mode)
                .map(|p| tokens as f64 * p / 1_000_000.0)
        };
        Self {
            direct_usd: at(Mode::Direct),
            batch_usd: at(Mode::Batch),
        }
    }
}

#[derive(Debug, Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{}", active_run_message(.0))]
    ActiveRun(Box<RunStatus>),
    #[error("run {0} does not exist in backfill_runs")]
    UnknownRun(RunId),
    #[error("run {0} has no dispatch options recorded; it was not created by this tool")]
    NoOptions(RunId),
    #[error("EMBEDDING_PROVIDER={provider} has no {mode} mode here (batch mode needs OpenAI's Batch API); dispatch with mode direct, or use EMBEDDING_PROVIDER=openai")]
    ModeUnavailable { provider: &'static str, mode: Mode },
}

/// Why a dispatch was refused, naming a stalled run as stalled: it will not
/// end by itself, so waiting for it is no remedy.
fn active_run_message(run: &RunStatus) -> String {
    let what = run
        .archive
        .as_deref()
        .map(|a| format!("archive {a:?}"))
        .unwrap_or_else(|| "all archives".into());
    let ended = run.batches_done + run.batches_failed;
    match progress::stall(run, progress::DEFAULT_STALLED_AFTER, None, &[]) {
        Some(stall) => format!(
            "run {} over {what} is stalled: {ended} of {} batches ended and nothing has moved for {}. Finish it with `{}`, or pass force to start another anyway",
            run.id,
            run.total_batches,
            progress::human_duration(Duration::from_secs_f64(stall.idle_secs)),
            stall.remedy
        ),
        None => format!(
            "run {} is still {} for {what} ({ended} of {} batches ended): wait for it (`backfill status {}`), continue it, or pass force to start another anyway",
            run.id,
            run.state.as_str(),
            run.total_batches,
            run.id
        ),
    }
}

/// Ids read per page: several batches, so each page is one status RPC.
const PAGE_BATCHES: u32 = 10;
/// Time a page may take; a dispatch with less left stops and asks to be continued.
const PAGE_MARGIN: Duration = Duration::from_secs(20);
/// Time kept back from the deadline to record where the dispatch stands and
/// answer (at most a quarter of what is left, for short deadlines).
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Runs `work` until the invocation must answer; `None` when it was cut off.
/// Every step of a dispatch is safe to cut anywhere: a page's batches and its
/// cursor are saved together, and a batch saved but not confirmed queued is
/// sent again by the continuation.
async fn before_deadline<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let Some(d) = deadline else {
        return Some(work.await);
    };
    let left = d.saturating_duration_since(Instant::now());
    tokio::time::timeout_at(d - ANSWER_MARGIN.min(left / 4), work)
        .await
        .ok()
}

pub struct Dispatcher<Q> {
    store: Arc<dyn Store>,
    queue: Q,
    provider: Arc<dyn Provider>,
    metrics: Metrics,
}

impl<Q: Queue> Dispatcher<Q> {
    pub fn new(store: Arc<dyn Store>, queue: Q, provider: Arc<dyn Provider>) -> Self {
        Self {
            store,
            queue,
            provider,
            metrics: Metrics::off(),
        }
    }

    /// This dispatcher, writing a metrics record per invocation into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub async fn dispatch(&self, opts: &DispatchOptions) -> Result<DispatchSummary, DispatchError> {
        self.dispatch_run(RunId::random(), opts, None).await
    }

    /// Dispatches under a run id the caller chose (so it can watch the run while
    /// it pages), stopping before `deadline` with `complete: false`.
    pub async fn dispatch_run(
        &self,
        run: RunId,
        opts: &DispatchOptions,
        deadline: Option<Instant>,
    ) -> Result<DispatchSummary, DispatchError> {
        let price = self.provider.price_per_million_tokens(opts.mode).ok_or(
            DispatchError::ModeUnavailable {
                provider: self.provider.name(),
                mode: opts.mode,
            },
        )?;
        if opts.dry_run {
            return self.dry_run(opts).await;
        }
        let params = serde_json::to_value(self.params(opts)).unwrap_or_default();
        let created = self
            .store
            .create_run(run, &params, opts.archive.as_deref(), price, opts.force)
            .await?;
        if let CreatedRun::Conflict { conflict } = created {
            return Err(DispatchError::ActiveRun(conflict));
        }
        tracing::info!(run_id = %run, archive = ?opts.archive, "run created");
        let started = StdInstant::now();
        let cursor = Cursor::start(opts);
        let selection = self.params(opts).selection();
        let answer = self
            .page_and_finish(run, &selection, opts, cursor, deadline)
            .await?;
        self.record(run, None, &answer, started);
        Ok(answer)
    }

    /// The metrics record of one invocation: what it added to the run's
    /// totals, so the records of a run's continuations add up to the run.
    fn record(
        &self,
        run: RunId,
        before: Option<&DispatchSummary>,
        after: &DispatchSummary,
        started: StdInstant,
    ) {
        let was = |f: fn(&DispatchSummary) -> u64| before.map_or(0, f);
        self.metrics.write(DispatchRecord {
            timestamp: SystemTime::now(),
            run: run.to_string(),
            batches_queued: after.batches.saturating_sub(was(|s| s.batches)),
            documents_queued: after.documents.saturating_sub(was(|s| s.documents)),
            estimated_tokens: after
                .estimated_tokens
                .saturating_sub(was(|s| s.estimated_tokens)),
            estimated_cost_usd: (after.estimated_cost_usd
                - before.map_or(0.0, |s| s.estimated_cost_usd))
            .max(0.0),
            dispatch_duration: started.elapsed(),
        });
    }

    /// What a run of `opts` records: with the provider's model and dimensions.
    fn params(&self, opts: &DispatchOptions) -> RunParams {
        RunParams {
            options: opts.clone(),
            target: self.store.target().clone(),
            provider: self.provider.name().into(),
            model: self.provider.model().into(),
            dimensions: self.provider.dimensions(),
        }
    }

    /// Continues a run whose dispatch stopped (deadline, crash or error) from
    /// its saved cursor: batches recorded but not confirmed queued are sent
    /// again (the worker skips duplicates), then paging resumes after the cursor.
    pub async fn continue_run(
        &self,
        run: RunId,
        deadline: Option<Instant>,
    ) -> Result<DispatchSummary, DispatchError> {
        let status = self
            .store
            .run_status(Some(run))
            .await?
            .ok_or(DispatchError::UnknownRun(run))?;
        let params = RunParams::read(&status.params).ok_or(DispatchError::NoOptions(run))?;
        let opts = params.options.clone();
        // An older version ended a dispatch that met a permanent error `failed`.
        let status = if status.state == RunState::Failed && status.dispatched_at.is_none() {
            self.store.resume_dispatch(run).await?
        } else {
            status
        };
        if status.state != RunState::Dispatching {
            return Ok(summary(&status, &opts, true));
        }
        let started = StdInstant::now();
        let before = summary(&status, &opts, false);
        let resent = match before_deadline(deadline, self.resend_pending(run, &opts)).await {
            None => return self.stopped_at_deadline(run, &opts).await,
            Some(Err(e)) => return Err(self.stopped(run, e).await),
            Some(Ok(n)) => n,
        };
        let cursor = Cursor {
            after: status.cursor_id.or(opts.resume_from_id),
            seq: status.next_seq,
            remaining: opts.limit.map(|l| l.saturating_sub(status.total_documents)),
        };
        let mut answer = self
            .page_and_finish(run, &params.selection(), &opts, cursor, deadline)
            .await?;
        answer.resent_batches = resent;
        self.record(run, Some(&before), &answer, started);
        Ok(answer)
    }

    /// Sends the batches recorded but never confirmed queued; how many.
    async fn resend_pending(
        &self,
        run: RunId,
        opts: &DispatchOptions,
    ) -> Result<u64, DispatchError> {
        let pending = self.store.batches_in(run, &[BatchState::Pending]).await?;
        for chunk in pending.chunks(PAGE_BATCHES as usize * 10) {
            self.hand_over(run, opts, chunk).await?;
        }
        if !pending.is_empty() {
            tracing::info!(run_id = %run, batches = pending.len(), "pending batches queued again");
        }
        Ok(pending.len() as u64)
    }

    /// Hands saved batches on to be worked, then confirms them queued: in
    /// direct mode a message each on the queue, in batch mode a place in
    /// the run's jobs (one step, so nothing to confirm apart).
    pub(super) async fn hand_over(
        &self,
        run: RunId,
        opts: &DispatchOptions,
        batches: &[BatchRef],
    ) -> Result<(), DispatchError> {
        let seqs: Vec<BatchSeq> = batches.iter().map(|b| b.seq).collect();
        match opts.mode {
            Mode::Direct => {
                let messages: Vec<BatchMessage> =
                    batches.iter().map(|b| BatchMessage::of(run, b)).collect();
                self.queue.send(&messages).await?;
                failpoint::crash_point("dispatch_after_send");
                self.store.mark_queued(run, &seqs).await?;
            }
            Mode::Batch => {
                self.store
                    .queue_in_jobs(run, &seqs, opts.job_size, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Notes why the dispatch stopped on the run, which stays `dispatching`
    /// whatever the cause, so `--continue` can finish it once the cause is
    /// fixed (a rotated key, a missing grant) or has passed.
    async fn stopped(&self, run: RunId, e: DispatchError) -> DispatchError {
        let note =
            format!("dispatch stopped: {e}; continue it with `backfill dispatch --continue {run}`");
        if let Err(fail) = self.store.note_run_error(run, &note).await {
            tracing::error!(run_id = %run, error = %fail, "could not record why the dispatch stopped");
        }
        e
    }

    async fn stopped_at_deadline(
        &self,
        run: RunId,
        opts: &DispatchOptions,
    ) -> Result<DispatchSummary, DispatchError> {
        tracing::info!(run_id = %run, "deadline near: stopping; continue with {{\"continue_run\": \"{run}\"}}");
        let status = self
            .store
            .run_status(Some(run))
            .await?
            .ok_or(DispatchError::UnknownRun(run))?;
        Ok(summary(&status, opts, false))
    }

    async fn page_and_finish(
        &self,
        run: RunId,
        selection: &Selection,
        opts: &DispatchOptions,
        cursor: Cursor,
        deadline: Option<Instant>,
    ) -> Result<DispatchSummary, DispatchError> {
        match self
            .page_into_batches(run, selection, opts, cursor, deadline)
            .await
        {
            Ok(true) => Ok(summary(&self.store.finish_dispatch(run).await?, opts, true)),
            Ok(false) => self.stopped_at_deadline(run, opts).await,
            Err(e) => Err(self.stopped(run, e).await),
        }
    }
}

fn summary(status: &RunStatus, opts: &DispatchOptions, complete: bool) -> DispatchSummary {
    DispatchSummary {
        resent_batches: 0,
        run_id: Some(status.id),
        dry_run: false,
        archive: opts.archive.clone(),
        documents: status.total_documents,
        batches: status.total_batches,
        estimated_tokens: status.estimated_tokens,
        estimated_cost_usd: status.estimated_cost_usd,
        complete,
        coverage: None,
        costs: None,
    }
}

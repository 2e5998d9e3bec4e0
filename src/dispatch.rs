//! The dispatcher: pages the ids that still need a vector into batches, records
//! them in the status tables and queues one message per batch.

use crate::documents::{DocumentStore, PagedDocument};
use crate::embedder::tokens::{self, Tokenizer};
use crate::embedder::{self, Provider};
use crate::failpoint;
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::progress;
use crate::queue::{BatchMessage, Queue, QueueError};
use crate::status::{BatchRef, BatchState, CreatedRun, NewBatch, RunState, RunStatus, StatusStore};
use crate::supabase::RestError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const MAX_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_EMBEDDING_BATCH_SIZE: u32 = 100;
/// The most any provider takes; the worker keeps to its own provider's limit.
pub const MAX_EMBEDDING_BATCH_SIZE: u32 = embedder::MAX_INPUTS_PER_REQUEST as u32;
const MAX_ARCHIVE_LEN: usize = 1024;

/// The dispatcher's event, as a person writes it. Unknown fields are refused so
/// that a typo (`batchsize`) is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Start even though another run over an overlapping archive is active.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Continue a run whose dispatch stopped, instead of starting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_run: Option<RunId>,
    /// How many continuations led here; bounds a runaway self-invocation chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<u32>,
}

/// Continuations allowed from one dispatch: at 1,000 pages each, billions of ids.
pub const MAX_HOPS: u32 = 10_000;

/// What an event asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchCommand {
    Start(DispatchOptions),
    Continue { run: RunId, hop: u32 },
}

/// Checked options, defaults filled in; stored as the run's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchOptions {
    pub archive: Option<String>,
    pub limit: Option<u64>,
    pub resume_from_id: Option<DocumentId>,
    pub batch_size: u32,
    pub embedding_batch_size: u32,
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Error, PartialEq)]
pub enum EventError {
    #[error("the dispatcher event is not valid JSON: {0}")]
    NotJson(String),
    #[error("the dispatcher event must be a JSON object such as {{\"archive\": \"gjeldende-lover.tar.bz2\", \"limit\": 1000}}, not {0}")]
    NotAnObject(&'static str),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

fn field(field: &str, reason: impl Into<String>) -> EventError {
    EventError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl DispatchRequest {
    /// Reads an event, naming the field at fault.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        let kind = match &value {
            Value::Object(_) => None,
            Value::Null => Some("null"),
            Value::Array(_) => Some("an array"),
            Value::String(_) => Some("a string"),
            Value::Number(_) => Some("a number"),
            Value::Bool(_) => Some("a boolean"),
        };
        if let Some(kind) = kind {
            return Err(EventError::NotAnObject(kind));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            let inner = inner
                .split(" at line ")
                .next()
                .unwrap_or(&inner)
                .to_string();
            if path == "." {
                // Unknown fields are reported at the top; serde's text names them.
                EventError::Field {
                    field: inner.split('`').nth(1).unwrap_or("event").to_string(),
                    reason: inner,
                }
            } else {
                field(&path, inner)
            }
        })
    }

    pub fn from_json(text: &str) -> Result<Self, EventError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// A start or a continuation; a continuation takes no other options.
    pub fn into_command(self) -> Result<DispatchCommand, EventError> {
        let Some(run) = self.continue_run else {
            if self.hop.is_some() {
                return Err(field("hop", "only goes with continue_run"));
            }
            return self.validate().map(DispatchCommand::Start);
        };
        let others = DispatchRequest {
            continue_run: None,
            hop: None,
            ..self.clone()
        };
        if others != DispatchRequest::default() {
            return Err(field(
                "continue_run",
                "takes no other options: a continued run keeps the ones it was started with",
            ));
        }
        let hop = self.hop.unwrap_or(1);
        if hop > MAX_HOPS {
            return Err(field("hop", format!("{hop} continuations exceed the limit of {MAX_HOPS}; investigate the run before continuing it by hand")));
        }
        Ok(DispatchCommand::Continue { run, hop })
    }

    /// The options of a new run.
    pub fn validate(self) -> Result<DispatchOptions, EventError> {
        if self.continue_run.is_some() || self.hop.is_some() {
            return Err(field(
                "continue_run",
                "a continuation is not a new run's option",
            ));
        }
        let archive = match self.archive {
            None => None,
            Some(a) if a.is_empty() => {
                return Err(field(
                    "archive",
                    "must not be empty; leave it out to process every archive",
                ))
            }
            Some(a) if a.chars().count() > MAX_ARCHIVE_LEN => {
                return Err(field(
                    "archive",
                    format!("is longer than {MAX_ARCHIVE_LEN} characters"),
                ))
            }
            Some(a) if a.contains('\0') => {
                return Err(field("archive", "must not contain NUL characters"))
            }
            Some(a) => Some(a),
        };
        if self.limit == Some(0) {
            return Err(field(
                "limit",
                "must be at least 1; leave it out to process every document",
            ));
        }
        let resume_from_id = match self.resume_from_id {
            Some(id) if id < 0 => {
                return Err(field(
                    "resume_from_id",
                    format!("must be 0 or more, got {id}"),
                ))
            }
            other => other.map(DocumentId),
        };
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(field(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}"),
            ));
        }
        let embedding_batch_size = self
            .embedding_batch_size
            .unwrap_or(DEFAULT_EMBEDDING_BATCH_SIZE);
        if !(1..=MAX_EMBEDDING_BATCH_SIZE).contains(&embedding_batch_size) {
            return Err(field(
                "embedding_batch_size",
                format!("must be between 1 and {MAX_EMBEDDING_BATCH_SIZE} (the largest limit of inputs per request; each provider's own limit applies too), got {embedding_batch_size}"),
            ));
        }
        Ok(DispatchOptions {
            archive,
            limit: self.limit,
            resume_from_id,
            batch_size,
            embedding_batch_size,
            dry_run: self.dry_run,
            force: self.force,
        })
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
}

#[derive(Debug, Error)]
pub enum DispatchError {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{}", active_run_message(.0))]
    ActiveRun(Box<RunStatus>),
    #[error("run {0} does not exist in backfill_runs")]
    UnknownRun(RunId),
    #[error("run {0} has no dispatch options recorded; it was not created by this tool")]
    NoOptions(RunId),
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
    match progress::stall(run, progress::DEFAULT_STALLED_AFTER, None) {
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
    docs: DocumentStore,
    status: StatusStore,
    queue: Q,
    provider: Arc<dyn Provider>,
}

/// Where paging stands: the next id to page after, the next batch number and
/// how many documents the limit still allows.
struct Cursor {
    after: Option<DocumentId>,
    seq: u32,
    remaining: Option<u64>,
}

impl<Q: Queue> Dispatcher<Q> {
    pub fn new(
        docs: DocumentStore,
        status: StatusStore,
        queue: Q,
        provider: Arc<dyn Provider>,
    ) -> Self {
        Self {
            docs,
            status,
            queue,
            provider,
        }
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
        if opts.dry_run {
            return self.dry_run(opts).await;
        }
        let params = serde_json::json!({
            "options": opts,
            "target": self.docs.target(),
            "provider": self.provider.name(),
            "model": self.provider.model(),
            "dimensions": self.provider.dimensions(),
        });
        let created = self
            .status
            .create_run(
                run,
                &params,
                opts.archive.as_deref(),
                self.provider.price_per_million_tokens(),
                opts.force,
            )
            .await?;
        if let CreatedRun::Conflict { conflict } = created {
            return Err(DispatchError::ActiveRun(conflict));
        }
        tracing::info!(run_id = %run, archive = ?opts.archive, "run created");
        let cursor = Cursor {
            after: opts.resume_from_id,
            seq: 0,
            remaining: opts.limit,
        };
        self.page_and_finish(run, opts, cursor, deadline).await
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
            .status
            .run_status(Some(run))
            .await?
            .ok_or(DispatchError::UnknownRun(run))?;
        let opts: DispatchOptions = status
            .params
            .get("options")
            .cloned()
            .and_then(|o| serde_json::from_value(o).ok())
            .ok_or(DispatchError::NoOptions(run))?;
        // An older version ended a dispatch that met a permanent error `failed`.
        let status = if status.state == RunState::Failed && status.dispatched_at.is_none() {
            self.status.resume_dispatch(run).await?
        } else {
            status
        };
        if status.state != RunState::Dispatching {
            return Ok(summary(&status, &opts, true));
        }
        let resent = match before_deadline(deadline, self.resend_pending(run)).await {
            None => return self.stopped_at_deadline(run, &opts).await,
            Some(Err(e)) => return Err(self.stopped(run, e).await),
            Some(Ok(n)) => n,
        };
        let cursor = Cursor {
            after: status.cursor_id.or(opts.resume_from_id),
            seq: status.next_seq,
            remaining: opts.limit.map(|l| l.saturating_sub(status.total_documents)),
        };
        let mut answer = self.page_and_finish(run, &opts, cursor, deadline).await?;
        answer.resent_batches = resent;
        Ok(answer)
    }

    /// Sends the batches recorded but never confirmed queued; how many.
    async fn resend_pending(&self, run: RunId) -> Result<u64, DispatchError> {
        let pending = self.status.batches_in(run, &[BatchState::Pending]).await?;
        for chunk in pending.chunks(PAGE_BATCHES as usize * 10) {
            let messages: Vec<BatchMessage> =
                chunk.iter().map(|b| BatchMessage::of(run, b)).collect();
            self.queue.send(&messages).await?;
            let seqs: Vec<BatchSeq> = chunk.iter().map(|b| b.seq).collect();
            self.status.mark_queued(run, &seqs).await?;
        }
        if !pending.is_empty() {
            tracing::info!(run_id = %run, batches = pending.len(), "pending batches queued again");
        }
        Ok(pending.len() as u64)
    }

    /// Notes why the dispatch stopped on the run, which stays `dispatching`
    /// whatever the cause, so `--continue` can finish it once the cause is
    /// fixed (a rotated key, a missing grant) or has passed.
    async fn stopped(&self, run: RunId, e: DispatchError) -> DispatchError {
        let note =
            format!("dispatch stopped: {e}; continue it with `backfill dispatch --continue {run}`");
        if let Err(fail) = self.status.note_run_error(run, &note).await {
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
            .status
            .run_status(Some(run))
            .await?
            .ok_or(DispatchError::UnknownRun(run))?;
        Ok(summary(&status, opts, false))
    }

    async fn page_and_finish(
        &self,
        run: RunId,
        opts: &DispatchOptions,
        cursor: Cursor,
        deadline: Option<Instant>,
    ) -> Result<DispatchSummary, DispatchError> {
        match self.page_into_batches(run, opts, cursor, deadline).await {
            Ok(true) => Ok(summary(
                &self.status.finish_dispatch(run).await?,
                opts,
                true,
            )),
            Ok(false) => self.stopped_at_deadline(run, opts).await,
            Err(e) => Err(self.stopped(run, e).await),
        }
    }

    /// Pages until done (true) or until `deadline` is near (false). Each page's
    /// batches and the cursor after them are saved before the messages are sent.
    async fn page_into_batches(
        &self,
        run: RunId,
        opts: &DispatchOptions,
        mut cursor: Cursor,
        deadline: Option<Instant>,
    ) -> Result<bool, DispatchError> {
        let mut estimator: Option<TokenEstimator> = None;
        let mut first_page = true;
        loop {
            let page_size = u64::from(opts.batch_size * PAGE_BATCHES)
                .min(cursor.remaining.unwrap_or(u64::MAX)) as u32;
            if page_size == 0 {
                return Ok(true);
            }
            // Always one page per invocation, so a short deadline still progresses.
            if !first_page && deadline.is_some_and(|d| Instant::now() + PAGE_MARGIN > d) {
                return Ok(false);
            }
            first_page = false;
            let page = self.dispatch_page(run, opts, &mut cursor, &mut estimator, page_size);
            match before_deadline(deadline, page).await {
                None => return Ok(false),
                Some(Err(e)) => return Err(e),
                Some(Ok(false)) => return Ok(true),
                Some(Ok(true)) => {}
            }
        }
    }

    /// Pages, records and queues one page of batches; false when nothing lies
    /// beyond it. The batches and the cursor after them are saved before the
    /// messages are sent.
    async fn dispatch_page(
        &self,
        run: RunId,
        opts: &DispatchOptions,
        cursor: &mut Cursor,
        estimator: &mut Option<TokenEstimator>,
        page_size: u32,
    ) -> Result<bool, DispatchError> {
        let started = Instant::now();
        let page = self
            .docs
            .page(opts.archive.as_deref(), cursor.after, page_size)
            .await?;
        let Some(last) = page.rows.last() else {
            return Ok(false);
        };
        let last_id = last.id;
        let estimator = match estimator {
            Some(e) => e,
            None => estimator.insert(self.calibrate(&page.rows).await?),
        };
        let batches: Vec<NewBatch> = page
            .rows
            .chunks(opts.batch_size as usize)
            .map(|chunk| {
                let b = NewBatch {
                    seq: BatchSeq(cursor.seq),
                    ids: chunk.iter().map(|d| d.id).collect(),
                    estimated_tokens: chunk.iter().map(|d| estimator.estimate(d)).sum(),
                };
                cursor.seq += 1;
                b
            })
            .collect();
        self.status.add_batches(run, &batches, last_id).await?;
        failpoint::crash_point("dispatch_after_save");
        let refs: Vec<BatchRef> = batches
            .iter()
            .map(|b| BatchRef {
                seq: b.seq,
                first_id: b.ids[0],
                last_id: b.ids[b.ids.len() - 1],
            })
            .collect();
        let messages: Vec<BatchMessage> = refs.iter().map(|b| BatchMessage::of(run, b)).collect();
        self.queue.send(&messages).await?;
        failpoint::crash_point("dispatch_after_send");
        let seqs: Vec<BatchSeq> = batches.iter().map(|b| b.seq).collect();
        self.status.mark_queued(run, &seqs).await?;
        tracing::info!(
            run_id = %run,
            first_id = %page.rows[0].id,
            last_id = %last_id,
            documents = page.rows.len(),
            batches = batches.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "page queued"
        );
        if let Some(r) = cursor.remaining.as_mut() {
            *r -= page.rows.len() as u64;
        }
        cursor.after = Some(last_id);
        Ok(page.more)
    }

    /// Counts the texts of the first page's first documents exactly, for the
    /// estimate of the rest.
    async fn calibrate(&self, page: &[PagedDocument]) -> Result<TokenEstimator, DispatchError> {
        let sample: Vec<DocumentId> = page.iter().take(CALIBRATION_DOCS).map(|d| d.id).collect();
        let mut exact = HashMap::with_capacity(sample.len());
        let (mut tokens, mut bytes) = (0u64, 0u64);
        let count = self.token_count();
        self.docs
            .for_each_missing(&sample, count.prefix_chars(), |d| {
                let n = count.of(&d.content);
                // A text cut at the input limit says nothing about tokens per byte.
                if n > 0 && n < count.limit as u64 {
                    tokens += n;
                    bytes += d.content.as_deref().map_or(0, |t| t.len() as u64);
                }
                exact.insert(d.id, n);
            })
            .await?;
        Ok(TokenEstimator {
            count,
            tokens_per_byte: if bytes == 0 {
                TokenEstimator::FALLBACK
            } else {
                tokens as f64 / bytes as f64
            },
            exact,
        })
    }

    fn token_count(&self) -> TokenCount {
        TokenCount {
            tokenizer: self.provider.tokenizer(),
            limit: self.provider.limits().tokens_per_input,
        }
    }

    /// Counts what a run would do from the real texts, and changes nothing.
    async fn dry_run(&self, opts: &DispatchOptions) -> Result<DispatchSummary, DispatchError> {
        let count = self.token_count();
        let mut cursor = opts.resume_from_id;
        let mut remaining = opts.limit;
        let mut documents = 0u64;
        let mut tokens_total = 0u64;
        loop {
            let page_size =
                u64::from(opts.batch_size * PAGE_BATCHES).min(remaining.unwrap_or(u64::MAX)) as u32;
            if page_size == 0 {
                break;
            }
            let page = self
                .docs
                .page(opts.archive.as_deref(), cursor, page_size)
                .await?;
            let Some(last) = page.rows.last() else { break };
            cursor = Some(last.id);
            documents += page.rows.len() as u64;
            let ids: Vec<DocumentId> = page.rows.iter().map(|d| d.id).collect();
            self.docs
                .for_each_missing(&ids, count.prefix_chars(), |d| {
                    tokens_total += count.of(&d.content)
                })
                .await?;
            if let Some(r) = remaining.as_mut() {
                *r -= page.rows.len() as u64;
            }
            if !page.more {
                break;
            }
        }
        Ok(DispatchSummary {
            run_id: None,
            dry_run: true,
            archive: opts.archive.clone(),
            documents,
            batches: documents.div_ceil(u64::from(opts.batch_size)),
            estimated_tokens: tokens_total,
            estimated_cost_usd: self.provider.cost_usd(tokens_total),
            complete: true,
            resent_batches: 0,
        })
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
    }
}

/// How the provider counts a text as the worker sends it: none when blank,
/// at most the input limit.
#[derive(Clone, Copy, Debug)]
struct TokenCount {
    tokenizer: Tokenizer,
    limit: usize,
}

impl TokenCount {
    fn of(self, text: &Option<String>) -> u64 {
        match text.as_deref() {
            Some(t) if !tokens::is_blank(t) => self.tokenizer.truncate(t, self.limit).tokens as u64,
            _ => 0,
        }
    }

    /// What the database sends of each text.
    fn prefix_chars(self) -> usize {
        self.tokenizer.prefix_chars(self.limit)
    }
}

/// Estimates a real dispatch's tokens without reading every text: the first
/// page's first documents are counted exactly with the provider's tokenizer,
/// and their tokens per byte applied to the stored sizes of the rest. (A dry
/// run counts every text.)
#[derive(Clone, Debug)]
struct TokenEstimator {
    count: TokenCount,
    tokens_per_byte: f64,
    exact: HashMap<DocumentId, u64>,
}

/// Texts the estimator reads: enough for a steady ratio, bounded whatever the
/// batch size.
const CALIBRATION_DOCS: usize = 1000;

impl TokenEstimator {
    /// The usual rule of thumb (4 characters a token) for ASCII text, when
    /// the first page has no text to measure.
    const FALLBACK: f64 = 0.25;

    fn estimate(&self, doc: &PagedDocument) -> u64 {
        match self.exact.get(&doc.id) {
            Some(&n) => n,
            None => ((doc.bytes as f64 * self.tokens_per_byte).ceil() as u64)
                .min(self.count.limit as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        DispatchRequest::from_json(json)
            .and_then(DispatchRequest::validate)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_follow_the_old_tool() {
        let o = DispatchRequest::from_json("{}")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(o.batch_size, 100);
        assert_eq!(o.embedding_batch_size, 100);
        assert!(!o.dry_run && o.archive.is_none() && o.limit.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(r#"{"batchsize": 5}"#).starts_with("batchsize:"),
            "{}",
            err(r#"{"batchsize": 5}"#)
        );
        assert!(err(r#"{"limit": "ten"}"#).starts_with("limit:"));
        assert!(err(r#"{"limit": -1}"#).starts_with("limit:"));
        assert!(err(r#"{"limit": 0}"#).starts_with("limit:"));
        assert!(err(r#"{"batch_size": 0}"#).starts_with("batch_size:"));
        assert!(err(r#"{"embedding_batch_size": 2049}"#).starts_with("embedding_batch_size:"));
        assert!(err(r#"{"archive": ""}"#).starts_with("archive:"));
        assert!(err(r#"{"archive": 7}"#).starts_with("archive:"));
        assert!(err(r#"{"resume_from_id": -5}"#).starts_with("resume_from_id:"));
        assert!(err(r#"{"dry_run": "yes"}"#).starts_with("dry_run:"));
        assert!(err("[]").contains("JSON object"));
        assert!(err("null").contains("JSON object"));
        assert!(err("{").contains("not valid JSON"));
    }

    #[test]
    fn estimates_from_the_samples_ratio() {
        let text = "Kommunen skal behandle søknaden innen fire uker. ".repeat(20);
        let exact = tokens::count(&text) as u64;
        let count = TokenCount {
            tokenizer: Tokenizer::Cl100k,
            limit: embedder::openai::LIMITS.tokens_per_input,
        };
        assert_eq!(count.of(&Some(text.clone())), exact);
        assert_eq!(count.of(&Some("  ".into())), 0);
        assert_eq!(count.of(&None), 0);
        let e = TokenEstimator {
            count,
            tokens_per_byte: exact as f64 / text.len() as f64,
            exact: HashMap::from([(DocumentId(1), exact)]),
        };
        let doc = |id, bytes| PagedDocument {
            id: DocumentId(id),
            bytes,
        };
        assert_eq!(e.estimate(&doc(1, 1)), exact);
        let later = e.estimate(&doc(3, text.len() as u64 * 2));
        assert!(later.abs_diff(exact * 2) <= 1, "{later} vs {}", exact * 2);
        assert_eq!(
            e.estimate(&doc(4, 10_000_000)),
            embedder::openai::LIMITS.tokens_per_input as u64
        );
        assert_eq!(e.estimate(&doc(5, 0)), 0);
    }
}

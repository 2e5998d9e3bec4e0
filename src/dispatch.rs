//! The dispatcher: pages the ids that still need a vector into batches, records
//! them in the status tables and queues one message per batch.

use crate::cost;
use crate::documents::{DocumentStore, PagedDocument};
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::queue::{BatchMessage, Queue, QueueError, MESSAGE_VERSION};
use crate::status::{NewBatch, StatusStore};
use crate::supabase::RestError;
use crate::tokens;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;
use thiserror::Error;

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const MAX_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_EMBEDDING_BATCH_SIZE: u32 = 100;
pub const MAX_EMBEDDING_BATCH_SIZE: u32 = 2048;
const MAX_ARCHIVE_LEN: usize = 1024;

/// The dispatcher's event, as a person writes it. Unknown fields are refused so
/// that a typo (`batchsize`) is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    #[serde(default)]
    pub archive: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub resume_from_id: Option<i64>,
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub embedding_batch_size: Option<u32>,
    #[serde(default)]
    pub dry_run: bool,
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

    pub fn validate(self) -> Result<DispatchOptions, EventError> {
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
                format!("must be between 1 and {MAX_EMBEDDING_BATCH_SIZE} (OpenAI's limit of inputs per request), got {embedding_batch_size}"),
            ));
        }
        Ok(DispatchOptions {
            archive,
            limit: self.limit,
            resume_from_id,
            batch_size,
            embedding_batch_size,
            dry_run: self.dry_run,
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
}

#[derive(Debug, Error)]
pub enum DispatchError {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Ids read per page: several batches, so each page is one status RPC.
const PAGE_BATCHES: u32 = 10;

pub struct Dispatcher<Q> {
    docs: DocumentStore,
    status: StatusStore,
    queue: Q,
    model: String,
    dimensions: u32,
}

impl<Q: Queue> Dispatcher<Q> {
    pub fn new(
        docs: DocumentStore,
        status: StatusStore,
        queue: Q,
        model: impl Into<String>,
        dimensions: u32,
    ) -> Self {
        Self {
            docs,
            status,
            queue,
            model: model.into(),
            dimensions,
        }
    }

    pub async fn dispatch(&self, opts: &DispatchOptions) -> Result<DispatchSummary, DispatchError> {
        self.dispatch_run(RunId::random(), opts).await
    }

    /// Dispatches under a run id the caller chose, so it can watch the run
    /// while the dispatch is still paging.
    pub async fn dispatch_run(
        &self,
        run: RunId,
        opts: &DispatchOptions,
    ) -> Result<DispatchSummary, DispatchError> {
        if opts.dry_run {
            return self.dry_run(opts).await;
        }
        let params = serde_json::json!({
            "options": opts,
            "model": self.model,
            "dimensions": self.dimensions,
        });
        self.status
            .create_run(
                run,
                &params,
                opts.archive.as_deref(),
                cost::price_per_million_tokens(&self.model),
            )
            .await?;
        tracing::info!(run_id = %run, archive = ?opts.archive, "run created");
        match self.page_into_batches(run, opts).await {
            Ok(()) => {}
            Err(e) => {
                // Batches already queued are still worked; the run records why it stopped.
                if let Err(fail) = self.status.fail_run(run, &e.to_string()).await {
                    tracing::error!(run_id = %run, error = %fail, "could not record the dispatch failure");
                }
                return Err(e);
            }
        }
        let status = self.status.finish_dispatch(run).await?;
        Ok(DispatchSummary {
            run_id: Some(run),
            dry_run: false,
            archive: opts.archive.clone(),
            documents: status.total_documents,
            batches: status.total_batches,
            estimated_tokens: status.estimated_tokens,
            estimated_cost_usd: status.estimated_cost_usd,
        })
    }

    async fn page_into_batches(
        &self,
        run: RunId,
        opts: &DispatchOptions,
    ) -> Result<(), DispatchError> {
        let mut cursor = opts.resume_from_id;
        let mut seq = 0u32;
        let mut remaining = opts.limit;
        let mut estimator: Option<TokenEstimator> = None;
        loop {
            let page_size =
                u64::from(opts.batch_size * PAGE_BATCHES).min(remaining.unwrap_or(u64::MAX)) as u32;
            if page_size == 0 {
                break;
            }
            let started = Instant::now();
            let page = self
                .docs
                .page(
                    opts.archive.as_deref(),
                    cursor,
                    page_size,
                    estimator.is_none(),
                )
                .await?;
            let Some(last) = page.last() else { break };
            let last_id = last.id;
            let estimator = estimator.get_or_insert_with(|| TokenEstimator::calibrate(&page));
            let batches: Vec<NewBatch> = page
                .chunks(opts.batch_size as usize)
                .map(|chunk| {
                    let b = NewBatch {
                        seq: BatchSeq(seq),
                        ids: chunk.iter().map(|d| d.id).collect(),
                        estimated_tokens: chunk.iter().map(|d| estimator.estimate(d)).sum(),
                    };
                    seq += 1;
                    b
                })
                .collect();
            self.status.add_batches(run, &batches, last_id).await?;
            let messages: Vec<BatchMessage> = batches
                .iter()
                .map(|b| BatchMessage {
                    v: MESSAGE_VERSION,
                    run_id: run,
                    batch: b.seq,
                    first_id: b.ids[0],
                    last_id: b.ids[b.ids.len() - 1],
                })
                .collect();
            self.queue.send(&messages).await?;
            let seqs: Vec<BatchSeq> = batches.iter().map(|b| b.seq).collect();
            self.status.mark_queued(run, &seqs).await?;
            tracing::info!(
                run_id = %run,
                first_id = %page[0].id,
                last_id = %last_id,
                documents = page.len(),
                batches = batches.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "page queued"
            );
            if let Some(r) = remaining.as_mut() {
                *r -= page.len() as u64;
            }
            if (page.len() as u32) < page_size {
                break;
            }
            cursor = Some(last_id);
        }
        Ok(())
    }

    /// Counts what a run would do from the real texts, and changes nothing.
    async fn dry_run(&self, opts: &DispatchOptions) -> Result<DispatchSummary, DispatchError> {
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
                .page(opts.archive.as_deref(), cursor, page_size, true)
                .await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            documents += page.len() as u64;
            tokens_total += page
                .iter()
                .filter_map(|d| d.content.as_deref())
                .filter(|t| !tokens::is_blank(t))
                .map(|t| tokens::truncate(t, tokens::MAX_INPUT_TOKENS).tokens as u64)
                .sum::<u64>();
            if let Some(r) = remaining.as_mut() {
                *r -= page.len() as u64;
            }
            if (page.len() as u32) < page_size {
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
            estimated_cost_usd: cost::cost_usd(tokens_total, &self.model),
        })
    }
}

/// Estimates a real dispatch's tokens without reading every text: the first
/// page is counted exactly with cl100k_base, and its tokens per character
/// applied to the lengths of the rest. (A dry run counts every text.)
#[derive(Clone, Copy, Debug)]
struct TokenEstimator {
    tokens_per_char: f64,
}

impl TokenEstimator {
    /// OpenAI's rule of thumb, when the first page has no text to measure.
    const FALLBACK: f64 = 0.25;

    fn calibrate(page: &[PagedDocument]) -> Self {
        let (tokens, chars) = page
            .iter()
            .filter_map(|d| d.content.as_deref())
            .filter(|t| !tokens::is_blank(t))
            .map(|t| {
                (
                    tokens::truncate(t, tokens::MAX_INPUT_TOKENS),
                    t.chars().count(),
                )
            })
            .filter(|(p, _)| !p.truncated)
            .fold((0usize, 0usize), |(t, c), (p, n)| (t + p.tokens, c + n));
        Self {
            tokens_per_char: if chars == 0 {
                Self::FALLBACK
            } else {
                tokens as f64 / chars as f64
            },
        }
    }

    fn estimate(&self, doc: &PagedDocument) -> u64 {
        match doc.content.as_deref() {
            Some(t) if tokens::is_blank(t) => 0,
            Some(t) => tokens::truncate(t, tokens::MAX_INPUT_TOKENS).tokens as u64,
            None => ((f64::from(doc.chars) * self.tokens_per_char).ceil() as u64)
                .min(tokens::MAX_INPUT_TOKENS as u64),
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

    fn doc(id: i64, content: Option<&str>, chars: u32) -> PagedDocument {
        PagedDocument {
            id: DocumentId(id),
            chars,
            content: content.map(String::from),
        }
    }

    #[test]
    fn estimates_from_the_first_pages_ratio() {
        let text = "Kommunen skal behandle søknaden innen fire uker. ".repeat(20);
        let n = text.chars().count() as u32;
        let first = [doc(1, Some(&text), n), doc(2, Some("  "), 2)];
        let e = TokenEstimator::calibrate(&first);
        let exact = tokens::count(&text) as u64;
        assert_eq!(e.estimate(&first[0]), exact);
        assert_eq!(e.estimate(&first[1]), 0);
        let later = e.estimate(&doc(3, None, n * 2));
        assert!(later.abs_diff(exact * 2) <= 1, "{later} vs {}", exact * 2);
        assert_eq!(e.estimate(&doc(4, None, 10_000_000)), 8191);
        let empty = TokenEstimator::calibrate(&[]);
        assert_eq!(empty.estimate(&doc(5, None, 400)), 100);
    }
}

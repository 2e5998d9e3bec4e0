//! What the SQL tables hold, and the helpers the functions share: the
//! rows and their vectors' provenance, a run's counters, its batches and
//! its batch-mode jobs, and the bookkeeping (`backfill_settle_run`,
//! `backfill_reopen_run`, `backfill_uncount_batch`, readying the open job)
//! more than one function calls.

use super::provenance::Provenance;
use crate::ids::{BatchSeq, DocumentId, JobSeq, RunId};
use crate::store::model::*;
use crate::store::vectors::*;
use crate::store::{Job, JobState, StoreError};
use chrono::{DateTime, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) documents: BTreeMap<DocumentId, Row>,
    /// `backfill_provenance` of the one target: a table of its own, keyed by
    /// id, which neither replacing a row nor another writer's vector touches.
    pub(super) provenance: BTreeMap<DocumentId, Provenance>,
    /// In creation order, which breaks ties of `created_at`.
    pub(super) runs: Vec<Run>,
    /// The last provenance's `embedded_at` handed out (see [`State::stamp`]).
    stamped: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub(super) struct Row {
    pub(super) archive: Option<String>,
    pub(super) content: Option<String>,
    pub(super) embedding: Option<Vec<f32>>,
}

impl Row {
    pub(super) fn in_archive(&self, archive: Option<&str>) -> bool {
        archive.is_none_or(|a| self.archive.as_deref() == Some(a))
    }
}

#[derive(Debug)]
pub(super) struct Run {
    pub(super) id: RunId,
    pub(super) params: Value,
    pub(super) archive: Option<String>,
    pub(super) state: RunState,
    pub(super) cursor_id: Option<DocumentId>,
    pub(super) next_seq: u32,
    pub(super) total_documents: u64,
    pub(super) total_batches: u64,
    pub(super) batches_done: u64,
    pub(super) batches_failed: u64,
    pub(super) documents_embedded: u64,
    pub(super) documents_skipped: u64,
    pub(super) documents_failed: u64,
    pub(super) tokens_used: u64,
    /// Of the documents embedded, copies of another row's vector, and the
    /// tokens they did not cost.
    pub(super) documents_copied: u64,
    pub(super) tokens_saved: u64,
    pub(super) tokens_billed: u64,
    pub(super) estimated_tokens: u64,
    pub(super) price_per_million_tokens: f64,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) dispatched_at: Option<DateTime<Utc>>,
    pub(super) finished_at: Option<DateTime<Utc>>,
    pub(super) last_error: Option<String>,
    pub(super) batches: BTreeMap<BatchSeq, Batch>,
    pub(super) jobs: BTreeMap<JobSeq, JobRow>,
}

#[derive(Debug)]
pub(super) struct Batch {
    pub(super) ids: Vec<DocumentId>,
    pub(super) first_id: DocumentId,
    pub(super) last_id: DocumentId,
    pub(super) state: BatchState,
    pub(super) attempts: u32,
    pub(super) documents_embedded: u64,
    /// Rows chunks and copies wrote, not yet in the run's counters; of
    /// them, the copies and the tokens those saved.
    pub(super) documents_written: u64,
    pub(super) documents_copied: u64,
    pub(super) tokens_saved: u64,
    pub(super) documents_skipped: u64,
    pub(super) documents_failed: u64,
    pub(super) failed_documents: Vec<FailedDocument>,
    pub(super) error: Option<String>,
    pub(super) leased_until: Option<DateTime<Utc>>,
    /// Summed into its job's estimate, which the queued-token limit reads.
    pub(super) estimated_tokens: u64,
    pub(super) job: Option<JobSeq>,
    pub(super) plan: Option<Value>,
}

/// A row of `backfill_jobs`, without its key.
#[derive(Debug)]
pub(super) struct JobRow {
    pub(super) state: JobState,
    pub(super) documents: u64,
    pub(super) estimated_tokens: u64,
    pub(super) input_file_id: Option<String>,
    pub(super) batch_id: Option<String>,
    pub(super) provider_status: Option<String>,
    pub(super) lines_total: u64,
    pub(super) lines_completed: u64,
    pub(super) lines_failed: u64,
    pub(super) queued_before: Option<u64>,
    pub(super) blocked_behind: Option<u64>,
    pub(super) attempts: u32,
    pub(super) leased_until: Option<DateTime<Utc>>,
    pub(super) error: Option<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) submitting_since: Option<DateTime<Utc>>,
    pub(super) submitted_at: Option<DateTime<Utc>>,
    pub(super) finished_at: Option<DateTime<Utc>>,
    pub(super) updated_at: DateTime<Utc>,
}

/// The error PostgREST surfaces for a function's `RAISE ... USING ERRCODE`.
pub(super) fn raise(function: &str, code: &str, message: String) -> StoreError {
    StoreError::Server {
        function: function.into(),
        status: 500,
        code: code.into(),
        message,
        hint: None,
    }
}

/// What the REST client makes of a function's SQL NULL answer (the status
/// of a run that does not exist) where it expects a value.
pub(super) fn null_answer<T: DeserializeOwned>(function: &str) -> Result<T, StoreError> {
    serde_json::from_str("null").map_err(|e| StoreError::Decode {
        function: function.into(),
        reason: e.to_string(),
    })
}

/// The keyset range after `after`.
pub(super) fn after<K: Copy>(after: Option<K>) -> (Bound<K>, Bound<K>) {
    (
        after.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    )
}

/// pgvector's checks on reading a vector, which fail the whole call.
pub(super) fn check_vectors(function: &str, vectors: &[VectorRow<'_>]) -> Result<(), StoreError> {
    for v in vectors {
        let problem = if v.embedding.is_empty() {
            "vector must have at least 1 dimension"
        } else if v.embedding.iter().any(|x| x.is_nan()) {
            "NaN not allowed in vector"
        } else if v.embedding.iter().any(|x| x.is_infinite()) {
            "infinite value not allowed in vector"
        } else {
            continue;
        };
        return Err(raise(function, "22000", problem.into()));
    }
    Ok(())
}

pub(super) fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    let secs = (lease.as_secs_f64().ceil() as i64).max(1);
    TimeDelta::try_seconds(secs)
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Run {
    /// `backfill_run_json`: the row, without the failure lists.
    pub(super) fn json(&self, now: DateTime<Utc>) -> RunStatus {
        let per_token = self.price_per_million_tokens / 1_000_000.0;
        RunStatus {
            id: self.id,
            params: self.params.clone(),
            archive: self.archive.clone(),
            state: self.state,
            cursor_id: self.cursor_id,
            next_seq: self.next_seq,
            total_documents: self.total_documents,
            total_batches: self.total_batches,
            batches_done: self.batches_done,
            batches_failed: self.batches_failed,
            documents_embedded: self.documents_embedded,
            documents_skipped: self.documents_skipped,
            documents_failed: self.documents_failed,
            tokens_used: self.tokens_used,
            documents_copied: self.documents_copied,
            tokens_saved: self.tokens_saved,
            tokens_billed: self.tokens_billed,
            estimated_tokens: self.estimated_tokens,
            estimated_cost_usd: self.estimated_tokens as f64 * per_token,
            actual_cost_usd: self.tokens_billed as f64 * per_token,
            created_at: self.created_at,
            updated_at: self.updated_at,
            dispatched_at: self.dispatched_at,
            finished_at: self.finished_at,
            last_error: self.last_error.clone(),
            now,
            failed_batches: Vec::new(),
            failed_documents: Vec::new(),
        }
    }

    /// `backfill_settle_run`.
    pub(super) fn settle(&mut self, now: DateTime<Utc>) {
        let settles = matches!(
            self.state,
            RunState::Running | RunState::Completed | RunState::CompletedWithErrors
        ) && self.batches_done + self.batches_failed >= self.total_batches;
        if settles {
            self.state = if self.batches_failed > 0 || self.documents_failed > 0 {
                RunState::CompletedWithErrors
            } else {
                RunState::Completed
            };
            self.finished_at.get_or_insert(now);
            self.updated_at = now;
        }
    }

    /// `backfill_reopen_run`.
    pub(super) fn reopen(&mut self, now: DateTime<Utc>) {
        if matches!(
            self.state,
            RunState::Completed | RunState::CompletedWithErrors
        ) {
            self.state = RunState::Running;
            self.finished_at = None;
            self.updated_at = now;
        }
    }

    /// The open job is complete once no more batches come to it: the
    /// run's dispatch ended.
    pub(super) fn ready_open_jobs(&mut self, now: DateTime<Utc>) {
        for j in self.jobs.values_mut().filter(|j| j.state == JobState::Open) {
            j.state = JobState::Ready;
            j.updated_at = now;
        }
    }

    /// `backfill_uncount_batch`.
    pub(super) fn uncount(&mut self, seq: BatchSeq, now: DateTime<Utc>) {
        let Some(b) = self.batches.get_mut(&seq) else {
            return;
        };
        match b.state {
            BatchState::Failed => {
                self.batches_failed = self.batches_failed.saturating_sub(1);
                self.documents_failed = self.documents_failed.saturating_sub(b.documents_failed);
            }
            BatchState::DoneWithFailures => {
                self.batches_done = self.batches_done.saturating_sub(1);
                self.documents_failed = self.documents_failed.saturating_sub(b.documents_failed);
                self.documents_skipped = self.documents_skipped.saturating_sub(b.documents_skipped);
            }
            _ => return,
        }
        self.updated_at = now;
        b.documents_failed = 0;
        b.documents_skipped = 0;
        b.failed_documents.clear();
        self.reopen(now);
    }
}

impl JobRow {
    pub(super) fn new(state: JobState, now: DateTime<Utc>) -> Self {
        JobRow {
            state,
            documents: 0,
            estimated_tokens: 0,
            input_file_id: None,
            batch_id: None,
            provider_status: None,
            lines_total: 0,
            lines_completed: 0,
            lines_failed: 0,
            queued_before: None,
            blocked_behind: None,
            attempts: 0,
            leased_until: None,
            error: None,
            created_at: now,
            submitting_since: None,
            submitted_at: None,
            finished_at: None,
            updated_at: now,
        }
    }

    /// `to_jsonb(j) || jsonb_build_object('now', now())`.
    pub(super) fn json(&self, run: RunId, seq: JobSeq, now: DateTime<Utc>) -> Job {
        Job {
            run_id: run,
            seq,
            state: self.state,
            documents: self.documents,
            estimated_tokens: self.estimated_tokens,
            input_file_id: self.input_file_id.clone(),
            batch_id: self.batch_id.clone(),
            provider_status: self.provider_status.clone(),
            lines_total: self.lines_total,
            lines_completed: self.lines_completed,
            lines_failed: self.lines_failed,
            queued_before: self.queued_before,
            blocked_behind: self.blocked_behind,
            attempts: self.attempts,
            error: self.error.clone(),
            created_at: self.created_at,
            submitting_since: self.submitting_since,
            submitted_at: self.submitted_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
            now,
        }
    }
}

impl State {
    pub(super) fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    pub(super) fn run_mut(&mut self, id: RunId) -> Option<&mut Run> {
        self.runs.iter_mut().find(|r| r.id == id)
    }

    /// `now()` of a call that writes provenance: the clock, but always
    /// after the last call's (by a microsecond, the database's resolution),
    /// so the latest of two donors written by two calls is never in doubt.
    pub(super) fn stamp(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let now = match self.stamped {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.stamped = Some(now);
        now
    }
}

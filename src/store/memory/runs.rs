//! A run's row: `backfill_create_run` and the dispatcher's calls that record
//! its batches and end its dispatch, and `backfill_run_status`.

use super::state::{null_answer, raise, Batch, Run, State};
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::store::model::*;
use crate::store::StoreError;
use chrono::Utc;
use serde_json::Value;
use std::collections::BTreeMap;

const ADD_BATCHES: &str = "backfill_add_batches";
const FINISH_DISPATCH: &str = "backfill_finish_dispatch";
const NOTE_RUN_ERROR: &str = "backfill_note_run_error";
const RESUME_DISPATCH: &str = "backfill_resume_dispatch";
/// `backfill_run_status` lists at most this many failed batches.
const FAILED_BATCHES_SHOWN: usize = 100;

impl State {
    pub(super) fn create_run(
        &mut self,
        run: RunId,
        params: &Value,
        archive: Option<&str>,
        price_per_million_tokens: f64,
        force: bool,
    ) -> CreatedRun {
        let now = Utc::now();
        if let Some(existing) = self.run(run) {
            return CreatedRun::Run(Box::new(existing.json(now)));
        }
        if !force {
            let target = params.get("target");
            let active = self
                .runs
                .iter()
                .filter(|r| {
                    matches!(r.state, RunState::Dispatching | RunState::Running)
                        && (r.archive.is_none()
                            || archive.is_none()
                            || r.archive.as_deref() == archive)
                        && r.params.get("target") == target
                })
                .max_by_key(|r| r.created_at);
            if let Some(active) = active {
                return CreatedRun::Conflict {
                    conflict: Box::new(active.json(now)),
                };
            }
        }
        let created = Run {
            id: run,
            params: params.clone(),
            archive: archive.map(str::to_owned),
            state: RunState::Dispatching,
            cursor_id: None,
            next_seq: 0,
            total_documents: 0,
            total_batches: 0,
            batches_done: 0,
            batches_failed: 0,
            documents_embedded: 0,
            documents_skipped: 0,
            documents_failed: 0,
            tokens_used: 0,
            documents_copied: 0,
            tokens_saved: 0,
            tokens_billed: 0,
            estimated_tokens: 0,
            price_per_million_tokens,
            created_at: now,
            updated_at: now,
            dispatched_at: None,
            finished_at: None,
            last_error: None,
            batches: BTreeMap::new(),
            jobs: BTreeMap::new(),
        };
        let status = created.json(now);
        self.runs.push(created);
        CreatedRun::Run(Box::new(status))
    }

    pub(super) fn add_batches(
        &mut self,
        run: RunId,
        batches: &[NewBatch],
        cursor: DocumentId,
    ) -> Result<RunStatus, StoreError> {
        let now = Utc::now();
        let r = self.run_mut(run).ok_or_else(|| {
            raise(
                ADD_BATCHES,
                "P0002",
                format!("backfill run {run} does not exist"),
            )
        })?;
        if r.state != RunState::Dispatching {
            return Err(raise(
                ADD_BATCHES,
                "55000",
                format!(
                    "backfill run {run} is {}, not dispatching",
                    r.state.as_str()
                ),
            ));
        }
        // `ids[1]` of an empty array is NULL in the NOT NULL `first_id`,
        // checked before the insert looks for a conflict.
        if batches.iter().any(|b| b.ids.is_empty()) {
            return Err(raise(
                ADD_BATCHES,
                "23502",
                "null value in column \"first_id\" of relation \"backfill_batches\" violates not-null constraint".into(),
            ));
        }
        let mut next: Option<u32> = None;
        for b in batches {
            let (Some(&first_id), Some(&last_id)) = (b.ids.first(), b.ids.last()) else {
                continue;
            };
            if r.batches.contains_key(&b.seq) {
                continue; // ON CONFLICT DO NOTHING: the first of a seq wins.
            }
            r.batches.insert(
                b.seq,
                Batch {
                    ids: b.ids.clone(),
                    first_id,
                    last_id,
                    state: BatchState::Pending,
                    attempts: 0,
                    documents_embedded: 0,
                    documents_written: 0,
                    documents_copied: 0,
                    tokens_saved: 0,
                    documents_skipped: 0,
                    documents_failed: 0,
                    failed_documents: Vec::new(),
                    error: None,
                    leased_until: None,
                    estimated_tokens: b.estimated_tokens,
                    job: None,
                    plan: None,
                },
            );
            r.total_batches += 1;
            r.total_documents += b.ids.len() as u64;
            r.estimated_tokens += b.estimated_tokens;
            next = next.max(Some(b.seq.0.saturating_add(1)));
        }
        r.next_seq = r.next_seq.max(next.unwrap_or(0));
        r.cursor_id = Some(r.cursor_id.map_or(cursor, |c| c.max(cursor)));
        r.updated_at = now;
        Ok(r.json(now))
    }

    pub(super) fn mark_queued(&mut self, run: RunId, seqs: &[BatchSeq]) -> u64 {
        let Some(r) = self.run_mut(run) else {
            return 0;
        };
        let mut changed = 0;
        for b in r
            .batches
            .iter_mut()
            .filter(|(seq, _)| seqs.contains(seq))
            .map(|(_, b)| b)
        {
            if b.state == BatchState::Pending {
                b.state = BatchState::Queued;
                changed += 1;
            }
        }
        changed
    }

    pub(super) fn finish_dispatch(&mut self, run: RunId) -> Result<RunStatus, StoreError> {
        let now = Utc::now();
        let Some(r) = self.run_mut(run) else {
            return null_answer(FINISH_DISPATCH);
        };
        if r.state == RunState::Dispatching {
            r.state = RunState::Running;
            r.dispatched_at = Some(now);
            r.updated_at = now;
        }
        r.ready_open_jobs(now);
        r.settle(now);
        Ok(r.json(now))
    }

    pub(super) fn note_run_error(
        &mut self,
        run: RunId,
        error: &str,
    ) -> Result<RunStatus, StoreError> {
        let now = Utc::now();
        let Some(r) = self.run_mut(run) else {
            return null_answer(NOTE_RUN_ERROR);
        };
        r.last_error = Some(error.to_owned());
        r.updated_at = now;
        Ok(r.json(now))
    }

    pub(super) fn resume_dispatch(&mut self, run: RunId) -> Result<RunStatus, StoreError> {
        let now = Utc::now();
        let Some(r) = self.run_mut(run) else {
            return null_answer(RESUME_DISPATCH);
        };
        if r.state == RunState::Failed && r.dispatched_at.is_none() {
            r.state = RunState::Dispatching;
            r.finished_at = None;
            r.updated_at = now;
        }
        Ok(r.json(now))
    }

    pub(super) fn run_status(&self, run: Option<RunId>) -> Option<RunStatus> {
        let r = match run {
            Some(id) => self.run(id),
            None => self.runs.iter().max_by_key(|r| r.created_at),
        }?;
        let mut status = r.json(Utc::now());
        status.failed_batches = r
            .batches
            .iter()
            .filter(|(_, b)| matches!(b.state, BatchState::Failed | BatchState::Retrying))
            .take(FAILED_BATCHES_SHOWN)
            .map(|(seq, b)| FailedBatch {
                seq: *seq,
                first_id: b.first_id,
                last_id: b.last_id,
                state: b.state,
                attempts: b.attempts,
                error: b.error.clone(),
            })
            .collect();
        status.failed_documents = r
            .batches
            .values()
            .filter(|b| b.state == BatchState::DoneWithFailures)
            .flat_map(|b| b.failed_documents.iter().cloned())
            .collect();
        status.failed_documents.sort_by_key(|f| f.id);
        Some(status)
    }
}

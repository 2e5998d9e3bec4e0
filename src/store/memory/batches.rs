//! A batch's life: what the dispatcher lists and reopens, and a worker's
//! lease, vectors, completion and failure, each counted into the run once.

use super::provenance::Want;
use super::state::{after, check_vectors, lease_end, raise, State};
use super::vectors::set_vectors;
use crate::ids::{BatchSeq, RunId};
use crate::store::model::*;
use crate::store::vectors::*;
use crate::store::StoreError;
use chrono::Utc;
use std::time::Duration;

const WRITE: &str = "backfill_write_vectors";
const COMPLETE: &str = "backfill_complete_batch";

impl State {
    pub(super) fn batch_refs(
        &self,
        run: RunId,
        states: &[BatchState],
        after_seq: Option<BatchSeq>,
        max_rows: u32,
    ) -> Vec<BatchRef> {
        let Some(r) = self.run(run) else {
            return Vec::new();
        };
        r.batches
            .range(after(after_seq))
            .filter(|(_, b)| states.contains(&b.state))
            .take(max_rows as usize)
            .map(|(seq, b)| BatchRef {
                seq: *seq,
                first_id: b.first_id,
                last_id: b.last_id,
            })
            .collect()
    }

    pub(super) fn reopen_batches(&mut self, run: RunId, seqs: &[BatchSeq]) -> u64 {
        let now = Utc::now();
        let Some(r) = self.run_mut(run) else {
            return 0;
        };
        let ended_badly: Vec<BatchSeq> = r
            .batches
            .iter()
            .filter(|(seq, b)| {
                seqs.contains(seq)
                    && matches!(b.state, BatchState::Failed | BatchState::DoneWithFailures)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &ended_badly {
            r.uncount(*seq, now);
            if let Some(b) = r.batches.get_mut(seq) {
                b.state = BatchState::Queued;
            }
        }
        ended_badly.len() as u64
    }

    pub(super) fn begin_batch(
        &mut self,
        run: RunId,
        seq: BatchSeq,
        receive_count: u32,
        lease: Duration,
    ) -> BatchStart {
        let now = Utc::now();
        let mut start = BatchStart {
            run_found: false,
            batch_found: false,
            params: None,
            state: None,
            attempts: 0,
            ids: Vec::new(),
            leased: false,
            leased_until: None,
        };
        let Some(r) = self.run_mut(run) else {
            return start;
        };
        start.run_found = true;
        start.params = Some(r.params.clone());
        let Some(b) = r.batches.get(&seq) else {
            return start;
        };
        let takes = if b.state.is_done() {
            false
        } else if b.leased_until.is_some_and(|until| until > now) {
            start.leased = true;
            false
        } else {
            !(b.state == BatchState::Failed && receive_count > 1)
        };
        if takes {
            r.uncount(seq, now);
        }
        let Some(b) = r.batches.get_mut(&seq) else {
            return start;
        };
        if takes {
            b.attempts += 1;
            b.state = BatchState::Running;
            b.leased_until = Some(lease_end(now, lease));
        }
        start.batch_found = true;
        start.state = Some(b.state);
        start.attempts = b.attempts;
        start.ids = b.ids.clone();
        start.leased_until = b.leased_until;
        start
    }

    pub(super) fn write_vectors(
        &mut self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
    ) -> Result<u64, StoreError> {
        let now = self.stamp();
        let State {
            documents,
            provenance,
            runs,
            ..
        } = self;
        let missing = || {
            raise(
                WRITE,
                "P0002",
                format!("backfill batch {run}/{seq} does not exist"),
            )
        };
        let r = runs.iter_mut().find(|r| r.id == run).ok_or_else(missing)?;
        let b = r.batches.get_mut(&seq).ok_or_else(missing)?;
        let want = Want::of_run(WRITE, &r.params)?;
        check_vectors(WRITE, vectors)?;
        let set = set_vectors(
            WRITE, now, documents, provenance, &want, run, vectors, &b.ids,
        )?;
        if !b.state.is_done() {
            b.documents_written += set.written;
            b.documents_copied += set.copied;
            b.tokens_saved += set.tokens_saved;
        }
        Ok(set.written)
    }

    pub(super) fn complete_batch(
        &mut self,
        run: RunId,
        seq: BatchSeq,
        vectors: &[VectorRow<'_>],
        tokens: u64,
        failures: &[FailedDocument],
    ) -> Result<Completion, StoreError> {
        let now = Utc::now();
        let missing = || {
            raise(
                COMPLETE,
                "P0002",
                format!("backfill batch {run}/{seq} does not exist"),
            )
        };
        let stamp = self.stamp();
        let State {
            documents,
            provenance,
            runs,
            ..
        } = self;
        let r = runs.iter_mut().find(|r| r.id == run).ok_or_else(missing)?;
        let b = r.batches.get_mut(&seq).ok_or_else(missing)?;
        let want = Want::of_run(COMPLETE, &r.params)?;
        check_vectors(COMPLETE, vectors)?;
        let set = set_vectors(
            COMPLETE, stamp, documents, provenance, &want, run, vectors, &b.ids,
        )?;
        r.tokens_billed += tokens;
        if b.state.is_done() {
            b.leased_until = None;
            // The answer has no `copied`: the client reads 0.
            return Ok(Completion {
                counted: false,
                written: set.written,
                copied: 0,
                skipped: 0,
            });
        }
        let written = set.written + b.documents_written;
        let copied = set.copied + b.documents_copied;
        let saved = set.tokens_saved + b.tokens_saved;
        let failed = failures.len() as u64;
        let was_failed = b.state == BatchState::Failed;
        let uncounted_failed = if was_failed { b.documents_failed } else { 0 };
        let skipped = (b.ids.len() as u64).saturating_sub(b.documents_embedded + written + failed);
        b.state = if failed > 0 {
            BatchState::DoneWithFailures
        } else {
            BatchState::Done
        };
        b.documents_embedded += written;
        b.documents_written = 0;
        b.documents_copied = 0;
        b.tokens_saved = 0;
        b.documents_skipped = skipped;
        b.documents_failed = failed;
        b.failed_documents = failures.to_vec();
        b.error = None;
        b.leased_until = None;
        r.batches_done += 1;
        r.batches_failed = r.batches_failed.saturating_sub(u64::from(was_failed));
        r.documents_embedded += written;
        r.documents_copied += copied;
        r.tokens_saved += saved;
        r.documents_skipped += skipped;
        r.documents_failed = (r.documents_failed + failed).saturating_sub(uncounted_failed);
        r.tokens_used += tokens;
        r.updated_at = now;
        r.settle(now);
        Ok(Completion {
            counted: true,
            written,
            copied,
            skipped,
        })
    }

    pub(super) fn fail_batch(
        &mut self,
        run: RunId,
        seq: BatchSeq,
        error: &str,
        permanent: bool,
        tokens_billed: u64,
    ) -> FailureRecord {
        let now = Utc::now();
        let not_counted = FailureRecord::default();
        let Some(r) = self.run_mut(run) else {
            return not_counted;
        };
        r.tokens_billed += tokens_billed;
        let Some(b) = r.batches.get_mut(&seq).filter(|b| !b.state.is_done()) else {
            return not_counted;
        };
        let failed =
            (b.ids.len() as u64).saturating_sub(b.documents_embedded + b.documents_written);
        let counted = permanent && b.state != BatchState::Failed;
        let written = b.documents_written;
        if counted {
            r.batches_failed += 1;
            r.documents_failed += failed;
            r.documents_embedded += b.documents_written;
            r.documents_copied += b.documents_copied;
            r.tokens_saved += b.tokens_saved;
            b.documents_embedded += b.documents_written;
            b.documents_written = 0;
            b.documents_copied = 0;
            b.tokens_saved = 0;
        }
        let ends = permanent || b.state == BatchState::Failed;
        b.state = if ends {
            BatchState::Failed
        } else {
            BatchState::Retrying
        };
        b.documents_failed = if ends { failed } else { 0 };
        b.error = Some(error.to_owned());
        b.leased_until = None;
        r.last_error = Some(format!(
            "batch {seq} (ids {}..{}): {error}",
            b.first_id, b.last_id
        ));
        r.updated_at = now;
        r.settle(now);
        FailureRecord {
            counted,
            documents_failed: if counted { failed } else { 0 },
            documents_embedded: if counted { written } else { 0 },
        }
    }
}

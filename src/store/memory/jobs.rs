//! Batch mode's jobs (`005_jobs.sql`): the dispatcher fills them in batch
//! order, the poller takes, splits, updates and fails them.

use super::state::{after, lease_end, raise, JobRow, Run, State};
use crate::ids::{BatchSeq, JobSeq, RunId};
use crate::store::model::{BatchState, RunState};
use crate::store::{Job, JobBatch, JobRef, JobStart, JobState, JobUpdate, JobsDue, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

const QUEUE_IN_JOBS: &str = "backfill_queue_in_jobs";
const SPLIT_JOB: &str = "backfill_split_job";
const UPDATE_JOB: &str = "backfill_update_job";
const FAIL_JOB: &str = "backfill_fail_job";
/// `backfill_run_jobs` lists at most this many, the latest.
const RUN_JOBS_SHOWN: usize = 1000;

/// Counted into the run already, so no job works it any more.
fn ended(state: BatchState) -> bool {
    state.is_done() || state == BatchState::Failed
}

impl JobRow {
    /// `backfill_update_job`'s CASE expressions, each reading the row as it
    /// was before the update. Going back to `ready` keeps the uploaded file.
    fn update(&mut self, u: &JobUpdate, now: DateTime<Utc>) {
        if let Some(state) = u.state {
            if state == JobState::Submitted && self.state != JobState::Submitted {
                self.submitted_at = Some(now);
            }
            if state == JobState::Ready {
                self.batch_id = None;
                self.submitting_since = None;
                self.submitted_at = None;
            }
            if matches!(state, JobState::Done | JobState::Failed) {
                self.finished_at.get_or_insert(now);
            }
            self.state = state;
            self.leased_until = None;
        }
        if let Some(v) = &u.input_file_id {
            self.input_file_id = v.clone();
        }
        if let Some(v) = &u.batch_id {
            self.batch_id = Some(v.clone());
        }
        if let Some(v) = &u.provider_status {
            self.provider_status = Some(v.clone());
        }
        match &u.error {
            Some(v) => self.error = Some(v.clone()),
            None if matches!(u.state, Some(JobState::Submitted | JobState::Done)) => {
                self.error = None
            }
            None => {}
        }
        self.lines_total = u.lines_total.unwrap_or(self.lines_total);
        self.lines_completed = u.lines_completed.unwrap_or(self.lines_completed);
        self.lines_failed = u.lines_failed.unwrap_or(self.lines_failed);
        self.queued_before = u.queued_before.or(self.queued_before);
        self.blocked_behind = u.blocked_behind.unwrap_or(self.blocked_behind);
        self.updated_at = now;
    }
}

impl Run {
    /// `coalesce(max(seq), -1) + 1`.
    fn next_job(&self) -> JobSeq {
        JobSeq(self.jobs.keys().next_back().map_or(0, |s| s.0 + 1))
    }

    /// The job's documents and estimate summed again over the batches it holds.
    fn recount(&mut self, job: JobSeq, now: DateTime<Utc>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let held = self.batches.values().filter(|b| b.job == Some(job));
        (j.documents, j.estimated_tokens) = held.fold((0, 0), |(d, t), b| {
            (d + b.ids.len() as u64, t + b.estimated_tokens)
        });
        j.updated_at = now;
    }
}

impl State {
    pub(super) fn queue_in_jobs(
        &mut self,
        run: RunId,
        seqs: &[BatchSeq],
        max_documents: u32,
        from_job: Option<JobSeq>,
    ) -> Result<u64, StoreError> {
        if max_documents < 1 {
            return Err(raise(
                QUEUE_IN_JOBS,
                "22023",
                "p_max_documents must be at least 1".into(),
            ));
        }
        let now = Utc::now();
        let Some(r) = self.run_mut(run) else {
            return Ok(0);
        };
        let jobs = &r.jobs;
        let job_ended = |job: Option<JobSeq>| {
            job.and_then(|j| jobs.get(&j))
                .is_some_and(|j| matches!(j.state, JobState::Done | JobState::Failed))
        };
        let taken: Vec<BatchSeq> = r
            .batches
            .iter()
            .filter(|(seq, b)| {
                seqs.contains(seq)
                    && matches!(
                        b.state,
                        BatchState::Pending | BatchState::Queued | BatchState::Retrying
                    )
                    && (b.job.is_none() || b.job == from_job || job_ended(b.job))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &taken {
            let Some(b) = r.batches.get(seq) else {
                continue;
            };
            let (documents, tokens) = (b.ids.len() as u64, b.estimated_tokens);
            let open = r
                .jobs
                .iter()
                .rev()
                .find(|(_, j)| j.state == JobState::Open)
                .map(|(s, j)| (*s, j.documents));
            let job = match open {
                Some((s, held)) if held == 0 || held + documents <= u64::from(max_documents) => s,
                _ => {
                    if let Some(full) = open.and_then(|(s, _)| r.jobs.get_mut(&s)) {
                        full.state = JobState::Ready;
                        full.updated_at = now;
                    }
                    let s = r.next_job();
                    r.jobs.insert(s, JobRow::new(JobState::Open, now));
                    s
                }
            };
            if let Some(j) = r.jobs.get_mut(&job) {
                j.documents += documents;
                j.estimated_tokens += tokens;
                j.updated_at = now;
            }
            if let Some(b) = r.batches.get_mut(seq) {
                b.job = Some(job);
                b.state = BatchState::Queued;
                b.plan = None;
            }
        }
        if r.state != RunState::Dispatching {
            r.ready_open_jobs(now);
        }
        if !taken.is_empty() {
            r.reopen(now);
        }
        Ok(taken.len() as u64)
    }

    pub(super) fn jobs_due(
        &self,
        model: &str,
        target: &Value,
        run: Option<RunId>,
        max: u32,
    ) -> JobsDue {
        let now = Utc::now();
        let mut due: Vec<_> = self
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.params.get("target") == Some(target))
            .filter(|(_, r)| run.is_none_or(|id| r.id == id))
            .flat_map(|(i, r)| r.jobs.iter().map(move |(seq, j)| (i, r, *seq, j)))
            .filter(|(_, _, _, j)| {
                matches!(j.state, JobState::Ready | JobState::Submitted)
                    && j.leased_until.is_none_or(|until| until <= now)
            })
            .map(|(i, r, seq, j)| {
                let job = JobRef {
                    run_id: r.id,
                    seq,
                    state: j.state,
                    estimated_tokens: j.estimated_tokens,
                    blocked_behind: j.blocked_behind,
                };
                ((j.state == JobState::Ready, r.created_at, i, seq), job)
            })
            .collect();
        due.sort_by_key(|(order, _)| *order);
        let queued: Vec<&JobRow> = self
            .runs
            .iter()
            .filter(|r| r.params.get("model").and_then(Value::as_str) == Some(model))
            .filter(|r| r.params.get("target") == Some(target))
            .flat_map(|r| r.jobs.values())
            .filter(|j| j.state == JobState::Submitted)
            .collect();
        JobsDue {
            jobs: due
                .into_iter()
                .take(max as usize)
                .map(|(_, job)| job)
                .collect(),
            queued_jobs: queued.len() as u64,
            queued_tokens: queued.iter().map(|j| j.estimated_tokens).sum(),
        }
    }

    pub(super) fn begin_job(&mut self, run: RunId, job: JobSeq, lease: Duration) -> JobStart {
        let now = Utc::now();
        let Some((r, j)) = self
            .run_mut(run)
            .and_then(|r| r.jobs.get_mut(&job).map(|j| (&r.params, j)))
        else {
            return JobStart {
                job: None,
                params: None,
                leased: false,
            };
        };
        let leased = j.leased_until.is_some_and(|until| until > now);
        if !leased && matches!(j.state, JobState::Ready | JobState::Submitted) {
            if j.state == JobState::Ready {
                j.attempts += 1;
                j.submitting_since.get_or_insert(now);
            }
            j.leased_until = Some(lease_end(now, lease));
            j.updated_at = now;
        }
        JobStart {
            job: Some(j.json(run, job, now)),
            params: Some(r.clone()),
            leased,
        }
    }

    pub(super) fn job_batches(
        &self,
        run: RunId,
        job: JobSeq,
        after_seq: Option<BatchSeq>,
        max_rows: u32,
    ) -> Vec<JobBatch> {
        let Some(r) = self.run(run) else {
            return Vec::new();
        };
        r.batches
            .range(after(after_seq))
            .filter(|(_, b)| b.job == Some(job) && !ended(b.state))
            .take(max_rows as usize)
            .map(|(seq, b)| JobBatch {
                seq: *seq,
                first_id: b.first_id,
                last_id: b.last_id,
                ids: b.ids.clone(),
                plan: b.plan.clone(),
            })
            .collect()
    }

    /// A seq given twice updates its row once; a JSON null plan is SQL NULL.
    pub(super) fn save_plans(
        &mut self,
        run: RunId,
        job: JobSeq,
        plans: &[(BatchSeq, Value)],
    ) -> u64 {
        let Some(r) = self.run_mut(run) else {
            return 0;
        };
        let mut count = 0;
        for (seq, b) in r.batches.iter_mut().filter(|(_, b)| b.job == Some(job)) {
            if let Some((_, plan)) = plans.iter().find(|(s, _)| s == seq) {
                b.plan = Some(plan.clone()).filter(|p| !p.is_null());
                count += 1;
            }
        }
        count
    }

    pub(super) fn split_job(
        &mut self,
        run: RunId,
        job: JobSeq,
        from: BatchSeq,
    ) -> Result<JobSeq, StoreError> {
        let now = Utc::now();
        // The new job's row is inserted whatever `job` is: only the run's
        // foreign key can refuse it.
        let r = self.run_mut(run).ok_or_else(|| {
            raise(
                SPLIT_JOB,
                "23503",
                format!("insert or update on table \"backfill_jobs\" violates foreign key constraint \"backfill_jobs_run_id_fkey\" (Key (run_id)=({run}) is not present in table \"backfill_runs\".)"),
            )
        })?;
        let new = r.next_job();
        r.jobs.insert(new, JobRow::new(JobState::Ready, now));
        for b in r.batches.range_mut(from..).map(|(_, b)| b) {
            if b.job == Some(job) {
                b.job = Some(new);
                b.plan = None;
            }
        }
        r.recount(job, now);
        r.recount(new, now);
        Ok(new)
    }

    pub(super) fn update_job(
        &mut self,
        run: RunId,
        job: JobSeq,
        update: &JobUpdate,
    ) -> Result<Job, StoreError> {
        let now = Utc::now();
        let j = self
            .run_mut(run)
            .and_then(|r| r.jobs.get_mut(&job))
            .ok_or_else(|| missing_job(UPDATE_JOB, run, job))?;
        // `(c ->> 'lines_total')::integer` and the like.
        let counts = [
            update.lines_total,
            update.lines_completed,
            update.lines_failed,
            update.queued_before,
            update.blocked_behind.flatten(),
        ];
        if let Some(v) = counts.into_iter().flatten().find(|v| *v > i32::MAX as u64) {
            return Err(raise(
                UPDATE_JOB,
                "22003",
                format!("value \"{v}\" is out of range for type integer"),
            ));
        }
        j.update(update, now);
        Ok(j.json(run, job, now))
    }

    /// Checks the job first: its missing row fails `backfill_update_job` at
    /// the end, which rolls back the batches' failures too.
    pub(super) fn fail_job(
        &mut self,
        run: RunId,
        job: JobSeq,
        error: &str,
    ) -> Result<u64, StoreError> {
        let open: Vec<BatchSeq> = self
            .run(run)
            .filter(|r| r.jobs.contains_key(&job))
            .ok_or_else(|| missing_job(FAIL_JOB, run, job))?
            .batches
            .iter()
            .filter(|(_, b)| b.job == Some(job) && !ended(b.state))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &open {
            self.fail_batch(run, *seq, error, true, 0);
        }
        let failed = JobUpdate {
            state: Some(JobState::Failed),
            error: Some(error.to_owned()),
            ..JobUpdate::default()
        };
        self.update_job(run, job, &failed)?;
        Ok(open.len() as u64)
    }

    pub(super) fn run_jobs(&self, run: RunId) -> Vec<Job> {
        let now = Utc::now();
        let Some(r) = self.run(run) else {
            return Vec::new();
        };
        let skip = r.jobs.len().saturating_sub(RUN_JOBS_SHOWN);
        r.jobs
            .iter()
            .skip(skip)
            .map(|(seq, j)| j.json(run, *seq, now))
            .collect()
    }
}

/// `RAISE ... USING ERRCODE = 'P0002'` of `backfill_update_job`, as the
/// called `function` answers it.
fn missing_job(function: &str, run: RunId, job: JobSeq) -> StoreError {
    raise(
        function,
        "P0002",
        format!("backfill job {run}/{job} does not exist"),
    )
}

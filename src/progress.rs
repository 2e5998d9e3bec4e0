//! Progress of a run as the old tool printed it: done/total, percent, docs/s,
//! elapsed and ETA, computed from the status row so any process can show it.

use crate::store::{Job, JobState, RunState, RunStatus};
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub processed: u64,
    pub total: u64,
    pub percent: f64,
    pub docs_per_sec: f64,
    pub elapsed_secs: f64,
    pub eta_secs: Option<f64>,
}

pub fn of(status: &RunStatus) -> Progress {
    let processed = status.documents_processed();
    let total = status.total_documents;
    let end = status.finished_at.unwrap_or(status.now);
    let elapsed = (end - status.created_at).to_std().unwrap_or_default();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        processed as f64 / secs
    } else {
        0.0
    };
    let remaining = total.saturating_sub(processed);
    let eta_secs = if status.state.is_finished() {
        Some(0.0)
    } else if rate > 0.0 {
        Some(remaining as f64 / rate)
    } else {
        None
    };
    Progress {
        processed,
        total,
        percent: if total == 0 {
            100.0
        } else {
            processed as f64 * 100.0 / total as f64
        },
        docs_per_sec: rate,
        elapsed_secs: secs,
        eta_secs,
    }
}

/// How long a run may go without a batch ending before it counts as stalled.
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(30 * 60);

/// A run that stopped moving, and the one command that finishes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stall {
    /// Time since anything of the run last changed.
    pub idle_secs: f64,
    /// The queue was seen empty; false where there was no queue to ask.
    pub queue_checked: bool,
    pub remedy: String,
}

/// A run is stalled when it has work left, nothing of it has changed for
/// `after`, and (where the caller could see the queue: `queue_empty`) no
/// message is waiting or in flight. Its messages are gone (a last delivery
/// that crashed, messages that expired), so only the status tables can bring
/// its batches back. A dispatch that stopped is stalled the same way.
pub fn stall(
    status: &RunStatus,
    after: Duration,
    queue_empty: Option<bool>,
    jobs: &[Job],
) -> Option<Stall> {
    // A batch-mode run moves when its poller looks at its jobs, which
    // records what the provider said even while nothing ends for hours.
    let last = jobs
        .iter()
        .map(|j| j.updated_at)
        .fold(status.updated_at, |a, b| a.max(b));
    let idle = (status.now - last).to_std().unwrap_or_default();
    if idle < after || queue_empty == Some(false) {
        return None;
    }
    let waiting = jobs
        .iter()
        .any(|j| matches!(j.state, JobState::Ready | JobState::Submitted));
    let remedy = match status.state {
        RunState::Dispatching => format!("backfill dispatch --continue {}", status.id),
        RunState::Running if waiting => format!(
            "backfill poll --run {} (the poller's schedule is not running: is PollerEnabled true?)",
            status.id
        ),
        RunState::Running if status.batches_done + status.batches_failed < status.total_batches => {
            format!("backfill retry-failed {} --unfinished", status.id)
        }
        _ => return None,
    };
    Some(Stall {
        idle_secs: idle.as_secs_f64(),
        queue_checked: queue_empty.is_some(),
        remedy,
    })
}

/// `3.6s`, `24.8min`, `2.1h`, as the old tool printed durations.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.1}min", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, Utc};

    fn run(state: RunState, idle_mins: i64, done: u64, total: u64) -> RunStatus {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "id": "6f1c3c0e-8a8e-4a43-9d2c-3e4f5a6b7c8d", "params": {}, "archive": null,
            "state": state, "cursor_id": null, "next_seq": 0, "total_documents": total * 10,
            "total_batches": total, "batches_done": done, "batches_failed": 0,
            "documents_embedded": 0, "documents_skipped": 0, "documents_failed": 0,
            "tokens_used": 0, "estimated_tokens": 0, "estimated_cost_usd": 0.0,
            "actual_cost_usd": 0.0, "created_at": now - TimeDelta::hours(5),
            "updated_at": now - TimeDelta::minutes(idle_mins), "dispatched_at": null,
            "finished_at": null, "last_error": null, "now": now,
        }))
        .unwrap()
    }

    #[test]
    fn a_run_with_work_left_and_nothing_moving_is_stalled() {
        let after = DEFAULT_STALLED_AFTER;
        let s = stall(&run(RunState::Running, 45, 3, 5), after, None, &[]).unwrap();
        assert!(s.remedy.ends_with("--unfinished"), "{}", s.remedy);
        assert!(s.idle_secs >= 45.0 * 60.0);
        assert!(stall(&run(RunState::Running, 45, 3, 5), after, Some(true), &[]).is_some());
        // Messages still queued or in flight: they will move it.
        assert!(stall(&run(RunState::Running, 45, 3, 5), after, Some(false), &[]).is_none());
        // Recently moved, or nothing left to do.
        assert!(stall(&run(RunState::Running, 5, 3, 5), after, None, &[]).is_none());
        assert!(stall(&run(RunState::Running, 45, 5, 5), after, None, &[]).is_none());
        assert!(stall(&run(RunState::Completed, 45, 5, 5), after, None, &[]).is_none());
        let d = stall(&run(RunState::Dispatching, 45, 0, 5), after, None, &[]).unwrap();
        assert!(
            d.remedy.starts_with("backfill dispatch --continue"),
            "{}",
            d.remedy
        );
    }

    fn job(state: JobState, idle_mins: i64) -> Job {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "run_id": "6f1c3c0e-8a8e-4a43-9d2c-3e4f5a6b7c8d", "seq": 0, "state": state,
            "documents": 100, "estimated_tokens": 1000, "input_file_id": "file-1",
            "batch_id": "batch_1", "provider_status": "in_progress", "lines_total": 1,
            "lines_completed": 0, "lines_failed": 0, "blocked_behind": null, "attempts": 1,
            "error": null, "created_at": now - TimeDelta::hours(5), "submitting_since": null,
            "submitted_at": null, "finished_at": null,
            "updated_at": now - TimeDelta::minutes(idle_mins), "now": now,
        }))
        .unwrap()
    }

    #[test]
    fn a_batch_run_moves_while_its_poller_looks_at_its_jobs() {
        let after = DEFAULT_STALLED_AFTER;
        // Nothing has ended for hours, but the poller looked a minute ago.
        let waiting = run(RunState::Running, 240, 3, 5);
        let looked = [job(JobState::Submitted, 1)];
        assert!(stall(&waiting, after, None, &looked).is_none());
        // No poller has looked for 45 minutes: it is not running.
        let s = stall(&waiting, after, None, &[job(JobState::Submitted, 45)]).unwrap();
        assert!(s.remedy.starts_with("backfill poll --run"), "{}", s.remedy);
    }

    #[test]
    fn durations_read_like_the_old_tool() {
        assert_eq!(human_duration(Duration::from_millis(3600)), "3.6s");
        assert_eq!(human_duration(Duration::from_secs(1488)), "24.8min");
        assert_eq!(human_duration(Duration::from_secs(7560)), "2.1h");
    }
}

//! Progress of a run as the old tool printed it: done/total, percent, docs/s,
//! elapsed and ETA, computed from the status row so any process can show it.

use crate::status::RunStatus;
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

    #[test]
    fn durations_read_like_the_old_tool() {
        assert_eq!(human_duration(Duration::from_millis(3600)), "3.6s");
        assert_eq!(human_duration(Duration::from_secs(1488)), "24.8min");
        assert_eq!(human_duration(Duration::from_secs(7560)), "2.1h");
    }
}

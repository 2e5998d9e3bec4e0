//! What one caller's requests met: kept by the caller, not the embedder, so a
//! batch that fails or runs out of time still reports what it was billed and
//! how the API answered, in its log line, its failure record and its metrics.

use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Calls(Mutex<Tally>);

/// The sums so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Answers 429 (rate or quota).
    pub throttled: u64,
    /// Answers 5xx.
    pub server_errors: u64,
    /// Tokens the API charged for the requests it answered.
    pub billed_tokens: u64,
    /// Each answered request's round trip.
    pub latencies: Vec<Duration>,
    /// Time spent waiting for the rate governor's permission.
    pub rate_wait: Duration,
}

impl Calls {
    pub fn tally(&self) -> Tally {
        self.lock().clone()
    }

    pub(super) fn waited(&self, wait: Duration) {
        self.lock().rate_wait += wait;
    }

    /// One answered request: its status, its round trip and what it charged.
    pub(super) fn answered(&self, status: u16, took: Duration, billed_tokens: u64) {
        let mut t = self.lock();
        t.requests += 1;
        t.throttled += u64::from(status == 429);
        t.server_errors += u64::from(status >= 500);
        t.billed_tokens += billed_tokens;
        t.latencies.push(took);
    }

    /// A request that got no answer (connection refused, timed out).
    pub(super) fn unanswered(&self) {
        self.lock().requests += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A panic while holding this lock leaves only sums behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_answers_by_kind() {
        let calls = Calls::default();
        calls.answered(200, Duration::from_millis(120), 50);
        calls.answered(429, Duration::from_millis(5), 0);
        calls.answered(503, Duration::from_millis(7), 0);
        calls.unanswered();
        calls.waited(Duration::from_millis(300));
        calls.waited(Duration::from_millis(200));
        let t = calls.tally();
        assert_eq!(
            (t.requests, t.throttled, t.server_errors, t.billed_tokens),
            (4, 1, 1, 50)
        );
        assert_eq!(t.latencies.len(), 3);
        assert_eq!(t.latencies[0], Duration::from_millis(120));
        assert_eq!(t.rate_wait, Duration::from_millis(500));
    }
}

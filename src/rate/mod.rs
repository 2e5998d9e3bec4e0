//! The rate governor: one per process, shared by every request it makes, so
//! the backfill runs at the account's limit instead of into it.
//!
//! It paces by a token bucket per limit (tokens and requests per minute), sized
//! by the configured budget or, without one, by the limits the provider's
//! answers report; it lowers its bucket to what the provider says remains
//! (which counts every client of the account); it pauses everyone when
//! a 429 arrives; and it adapts how many requests are in flight with AIMD:
//! one more after each window of successes, half as many after a 429.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What one answer said of the rate limits, per minute; the provider reads
/// it from its own headers. `None` where the answer said nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateSignals {
    pub limit_tokens: Option<f64>,
    pub remaining_tokens: Option<f64>,
    pub limit_requests: Option<f64>,
    pub remaining_requests: Option<f64>,
}

/// A configured budget; `None` learns the limit from the API's answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// The account's limits, for all processes together.
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    /// Processes pacing against the same account at once (Lambda instances);
    /// each takes this share of the limits and of what the API says remains.
    /// 0 counts as 1.
    pub shares: u64,
}

impl Budget {
    fn share(&self) -> f64 {
        self.shares.max(1) as f64
    }
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn new(per_minute: f64) -> Self {
        Self {
            capacity: per_minute,
            level: per_minute,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.level = (self.level + elapsed.as_secs_f64() * self.capacity / 60.0).min(self.capacity);
    }

    /// Time until `n` is available; a request larger than the whole bucket
    /// waits for a full one.
    fn wait_for(&self, n: f64) -> Duration {
        let need = n.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) * 60.0 / self.capacity)
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: Option<Bucket>,
    requests: Option<Bucket>,
    refilled: Instant,
    paused_until: Option<Instant>,
    in_flight: usize,
    /// Fractional, so additive increase can be one per window of successes.
    concurrency: f64,
    /// Waiting requests in arrival order: only the first may take budget, so a
    /// large request is not starved by the ones that poll after it.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

#[derive(Debug)]
pub struct Governor {
    state: Mutex<State>,
    configured: Budget,
    max_concurrency: usize,
}

/// A slot for one request; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit<'a> {
    governor: &'a Governor,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut s = self.governor.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

/// A place in the line of waiting requests, left however the wait ends
/// (granted, past its deadline, or the caller's future dropped).
struct Place<'a> {
    governor: &'a Governor,
    ticket: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut s = self.governor.lock();
        s.waiting.retain(|t| *t != self.ticket);
    }
}

/// How long the governor would have a request wait; the caller gives up when
/// that is past its deadline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TooLong(pub Duration);

const START_CONCURRENCY: f64 = 4.0;
const POLL: Duration = Duration::from_millis(20);

impl Governor {
    pub fn new(budget: Budget, max_concurrency: usize) -> Self {
        let max_concurrency = max_concurrency.max(1);
        Self {
            state: Mutex::new(State {
                tokens: budget
                    .tokens_per_minute
                    .map(|l| Bucket::new(l as f64 / budget.share())),
                requests: budget
                    .requests_per_minute
                    .map(|l| Bucket::new(l as f64 / budget.share())),
                refilled: Instant::now(),
                paused_until: None,
                in_flight: 0,
                concurrency: START_CONCURRENCY.min(max_concurrency as f64),
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
            configured: budget,
            max_concurrency,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests allowed in flight now.
    pub fn concurrency(&self) -> usize {
        self.lock().concurrency as usize
    }

    /// Waits for a slot and for `tokens` of budget, or says how long it would
    /// take when that ends after `deadline`.
    pub async fn acquire(
        &self,
        tokens: u64,
        deadline: Option<Instant>,
    ) -> Result<Permit<'_>, TooLong> {
        let place = {
            let mut s = self.lock();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back(ticket);
            Place {
                governor: self,
                ticket,
            }
        };
        loop {
            let wait = {
                let mut guard = self.lock();
                let s = &mut *guard;
                let first = s.waiting.front() == Some(&place.ticket);
                let now = Instant::now();
                let elapsed = now.duration_since(s.refilled);
                s.refilled = now;
                for b in [s.tokens.as_mut(), s.requests.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    b.refill(elapsed);
                }
                let paused = s
                    .paused_until
                    .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
                let budget = [
                    s.tokens
                        .as_ref()
                        .map_or(Duration::ZERO, |b| b.wait_for(tokens as f64)),
                    s.requests
                        .as_ref()
                        .map_or(Duration::ZERO, |b| b.wait_for(1.0)),
                ]
                .into_iter()
                .max()
                .unwrap_or_default();
                let wait = paused.max(budget);
                if first && wait.is_zero() && s.in_flight < s.concurrency as usize {
                    if let Some(b) = s.tokens.as_mut() {
                        b.level -= (tokens as f64).min(b.capacity);
                    }
                    if let Some(b) = s.requests.as_mut() {
                        b.level -= 1.0;
                    }
                    s.in_flight += 1;
                    return Ok(Permit { governor: self });
                }
                wait
            };
            if let Some(d) = deadline {
                if Instant::now() + wait > d {
                    return Err(TooLong(wait));
                }
            }
            tokio::time::sleep(wait.clamp(POLL, Duration::from_secs(1))).await;
        }
    }

    /// Learns from a response: the limits and what remains of them, and, on a
    /// 429, to pause and to send fewer requests at once.
    pub fn observe(&self, signals: RateSignals, rate_limited: Option<Duration>) {
        let share = self.configured.share();
        let part = |v: Option<f64>| v.map(|v| v / share);
        let mut guard = self.lock();
        let s = &mut *guard;
        let learned = [
            (
                &mut s.tokens,
                part(signals.limit_tokens),
                part(signals.remaining_tokens),
                self.configured.tokens_per_minute,
            ),
            (
                &mut s.requests,
                part(signals.limit_requests),
                part(signals.remaining_requests),
                self.configured.requests_per_minute,
            ),
        ];
        for (bucket, limit, remaining, configured) in learned {
            if configured.is_none() {
                if let Some(limit) = limit.filter(|l| *l > 0.0) {
                    match bucket {
                        Some(b) => b.capacity = limit,
                        None => *bucket = Some(Bucket::new(limit)),
                    }
                }
            }
            if let (Some(b), Some(remaining)) = (bucket.as_mut(), remaining) {
                b.level = b.level.min(remaining);
            }
        }
        match rate_limited {
            Some(wait) => {
                let until = Instant::now() + wait.max(Duration::from_millis(100));
                s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
                s.concurrency = (s.concurrency / 2.0).max(1.0);
                if let Some(b) = s.tokens.as_mut() {
                    b.level = b.level.min(0.0);
                }
            }
            None => {
                s.concurrency =
                    (s.concurrency + 1.0 / s.concurrency).min(self.max_concurrency as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests;

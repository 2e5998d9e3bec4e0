//! When to try again: exponential backoff with full jitter, pushed out to what
//! the server asked for (read by each embedding provider from its answers),
//! and never past the caller's deadline.

use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            max_attempts: 6,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt + 1` (attempts count from 1), or `None`
    /// when the attempts are spent or the wait would end too close to `deadline`.
    pub fn next_delay(
        &self,
        attempt: u32,
        server_hint: Option<Duration>,
        deadline: Option<Instant>,
        margin: Duration,
    ) -> Option<Duration> {
        let exp = self.exact_delay(attempt)?;
        let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=exp.as_secs_f64()));
        let delay = match server_hint {
            // Full jitter below the server's hint would hit the limit again; add a
            // little jitter above it so concurrent workers do not wake together.
            Some(hint) => hint + jittered / 4,
            None => jittered,
        };
        if let Some(deadline) = deadline {
            if Instant::now() + delay + margin > deadline {
                return None;
            }
        }
        Some(delay)
    }

    /// The wait before attempt `attempt + 1` without jitter: `base` doubled for
    /// each attempt after the first, at most `cap`; `None` once the attempts are
    /// spent. For a schedule that must hold, such as how long a message's
    /// redeliveries ride out an outage: full jitter could spend them in an instant.
    pub fn exact_delay(&self, attempt: u32) -> Option<Duration> {
        (attempt < self.max_attempts).then(|| {
            self.base
                .saturating_mul(
                    1u32.checked_shl(attempt.saturating_sub(1))
                        .unwrap_or(u32::MAX),
                )
                .min(self.cap)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_delays_double_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            max_attempts: 5,
        };
        let delays: Vec<_> = (1..=5).map(|n| b.exact_delay(n)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(delays, [ms(10), ms(20), ms(40), ms(40), None]);
    }

    #[test]
    fn backoff_stops_at_attempts_and_deadline() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            max_attempts: 3,
        };
        assert!(b.next_delay(1, None, None, Duration::ZERO).unwrap() <= Duration::from_millis(10));
        assert!(b.next_delay(3, None, None, Duration::ZERO).is_none());
        let hinted = b
            .next_delay(1, Some(Duration::from_secs(2)), None, Duration::ZERO)
            .unwrap();
        assert!(hinted >= Duration::from_secs(2));
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(b
            .next_delay(1, Some(Duration::from_secs(1)), Some(soon), Duration::ZERO)
            .is_none());
    }
}

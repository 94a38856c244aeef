//! When to try a message again. The result is written to the row's
//! `next_attempt_at`, so the schedule survives restarts.

use std::time::Duration;

/// The longest `Retry-After` we honour: a provider asking for more is capped
/// so that one bad header cannot park a message for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Exponential backoff with full jitter, bounded by a maximum number of sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total sends allowed, the first one included.
    pub max_attempts: u32,
    /// Ceiling of the wait after the first failure.
    pub initial: Duration,
    /// Largest ceiling, whatever the attempt number.
    pub max: Duration,
    /// Growth of the ceiling per attempt.
    pub multiplier: f64,
}

/// What to do after a transient failure of attempt `n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// No attempts left: the message fails.
    GiveUp,
}

impl RetryPolicy {
    /// The ceiling of the wait after attempt `attempt` (1-based) failed:
    /// `min(max, initial * multiplier^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Decides after a transient failure of `attempt`; `jitter` in [0, 1] picks
    /// a point under the ceiling (full jitter), and a provider's `Retry-After`
    /// is a floor.
    pub fn after_transient(
        &self,
        attempt: u32,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let jittered = self.ceiling(attempt).mul_f64(jitter.clamp(0.0, 1.0));
        let floor = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
        RetryDecision::RetryAfter(jittered.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            multiplier: 3.0,
        }
    }

    #[test]
    fn ceiling_grows_then_caps() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_secs(2));
        assert_eq!(p.ceiling(2), Duration::from_secs(6));
        assert_eq!(p.ceiling(3), Duration::from_secs(18));
        assert_eq!(p.ceiling(4), Duration::from_secs(54));
        assert_eq!(p.ceiling(5), Duration::from_secs(60));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn last_attempt_gives_up() {
        assert_eq!(
            policy().after_transient(5, 0.5, None),
            RetryDecision::GiveUp
        );
        assert!(matches!(
            policy().after_transient(4, 0.5, None),
            RetryDecision::RetryAfter(_)
        ));
    }

    #[test]
    fn retry_after_is_a_floor_and_capped() {
        let p = policy();
        assert_eq!(
            p.after_transient(1, 0.0, Some(Duration::from_secs(30))),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.after_transient(1, 1.0, Some(Duration::from_secs(86_400 * 7))),
            RetryDecision::RetryAfter(MAX_RETRY_AFTER)
        );
    }

    proptest! {
        #[test]
        fn delay_stays_under_the_ceiling(attempt in 1u32..4, jitter in 0.0f64..=1.0) {
            let p = policy();
            match p.after_transient(attempt, jitter, None) {
                RetryDecision::RetryAfter(d) => prop_assert!(d <= p.ceiling(attempt)),
                RetryDecision::GiveUp => prop_assert!(false, "attempt {attempt} < max must retry"),
            }
        }

        #[test]
        fn ceiling_is_monotonic(a in 1u32..200) {
            prop_assert!(policy().ceiling(a) <= policy().ceiling(a + 1));
        }
    }
}

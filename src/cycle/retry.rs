//! How often and how long to wait between the attempts of one call. The policy only
//! decides; the waiting is scheduled by the cycle (see [`crate::cycle::schedule`]), so a
//! failed call never puts the worker to sleep while other orders could go on.

use std::time::Duration;

use crate::cycle::schedule::Pace;
use crate::services::http::CallError;

/// The retry policy of every call the worker makes.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub max_retries: u32,
    /// The first delay; doubled for each further retry.
    pub base: Duration,
    /// The longest delay, and the cap on a honoured `Retry-After`.
    pub cap: Duration,
}

/// Where a call stands between its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts made so far.
    pub made: u32,
    /// One of them failed slowly (after more than the HTTP timeout).
    pub slow_seen: bool,
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0 for the first retry): exponential with
    /// "equal jitter" (half fixed, half random, `jitter` in `[0, 1)`), or the
    /// service's `Retry-After` when it asks for longer, both capped.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.cap);
        let half = exp / 2;
        let backoff = half + half.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) if asked > backoff => asked.min(self.cap),
            _ => backoff,
        }
    }

    /// After an attempt failed with `error`: how long to wait before the next one, or
    /// `None` when the call has failed for good. Only [`CallError::Transient`] is
    /// retried, at most `max_retries` times, and after a slow failure only once more.
    /// `attempts` is updated with the failed attempt.
    pub fn after_failure(
        &self,
        attempts: &mut Attempts,
        error: &CallError,
        jitter: f64,
    ) -> Option<Duration> {
        let retry = attempts.made;
        attempts.made += 1;
        let CallError::Transient {
            retry_after, slow, ..
        } = error
        else {
            return None;
        };
        let spent = retry >= self.max_retries || (*slow && attempts.slow_seen);
        attempts.slow_seen |= *slow;
        if spent {
            return None;
        }
        Some(self.delay(retry, *retry_after, jitter))
    }

    /// The delay before the next attempt of a decided order's status update, which is
    /// never given up while the process lives: the backoff of `retry` (0 for the first
    /// retry), capped at [`RetryPolicy::cap`], and a longer `Retry-After` honoured up to
    /// the cap. `attempts` is updated with the failed attempt.
    pub fn status_delay(
        &self,
        attempts: &mut Attempts,
        error: &CallError,
        jitter: f64,
    ) -> Duration {
        let retry = attempts.made;
        attempts.made = attempts.made.saturating_add(1);
        let retry_after = match error {
            CallError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        self.delay(retry, retry_after, jitter)
    }
}

/// How soon a call that failed with `error` may go again (the scheduler decides with
/// the service's health and retry budget, [`crate::cycle::schedule::Scheduler::retry_at`]):
///
/// - a quick error answer that does not ask for a wait (a `500` or `502`, no
///   `Retry-After`) comes from a service that is up and answering: at once, within
///   the budget. Measured: at 30% faults, waiting 100-200 ms for the first retry left
///   the worker idle for a third of a 20,000-order drain, and the backoff of the last
///   orders ruled a 2,000-order drain;
/// - a call that failed only after the whole timeout (a stall) and was answered: not
///   the backoff, since the service has just had the timeout's rest, and the real
///   Stock Service recovers only at the end of a stall (idle time never frees its
///   pool). A Stock Service stall is retried after its short settle
///   ([`crate::cycle::schedule::STALL_SETTLE`]); an Order Service stall puts that service out
///   for its cool-down, which the retry waits for;
/// - anything else (refused, timed out with no answer, `429`, `503`, `Retry-After`):
///   after the backoff.
pub fn pace(error: &CallError) -> Pace {
    match error {
        CallError::Transient {
            retry_after: None,
            slow: false,
            status: Some(status),
            ..
        } if !matches!(status, 429 | 503) => Pace::Budgeted,
        CallError::Transient {
            retry_after: None,
            slow: true,
            status: Some(status),
            ..
        } if !matches!(status, 429 | 503) => Pace::AfterStall,
        _ => Pace::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        }
    }

    fn transient(slow: bool) -> CallError {
        CallError::Transient {
            detail: "502".into(),
            retry_after: None,
            slow,
            status: Some(502),
        }
    }

    /// Attempts a call whose every attempt fails with `error` makes, with `policy`.
    fn attempts_until_given_up(policy: &RetryPolicy, error: &CallError) -> u32 {
        let mut attempts = Attempts::default();
        while policy.after_failure(&mut attempts, error, 0.5).is_some() {
            assert!(attempts.made < 100, "never gives up");
        }
        attempts.made
    }

    #[test]
    fn delay_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        };
        assert_eq!(p.delay(0, None, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(0, None, 0.999_999).as_millis(), 199);
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(2, None, 1.0), Duration::from_millis(800));
        assert_eq!(p.delay(10, None, 1.0), Duration::from_secs(5));
        assert_eq!(p.delay(31, None, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        };
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2)), 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(60)), 0.5),
            Duration::from_secs(5)
        );
        // A Retry-After shorter than the backoff does not shorten it.
        assert_eq!(
            p.delay(2, Some(Duration::from_secs(0)), 0.0),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn transient_failures_are_retried_until_spent() {
        assert_eq!(attempts_until_given_up(&policy(3), &transient(false)), 4);
        assert_eq!(attempts_until_given_up(&policy(0), &transient(false)), 1);
        let mut attempts = Attempts::default();
        let first = policy(3).after_failure(&mut attempts, &transient(false), 0.0);
        assert_eq!(first, Some(Duration::from_micros(500)));
        let second = policy(3).after_failure(&mut attempts, &transient(false), 0.0);
        assert_eq!(second, Some(Duration::from_millis(1)), "doubled");
    }

    #[test]
    fn other_errors_are_not_retried() {
        for e in [
            CallError::Rejected {
                status: 400,
                reason: "Insufficient stock".into(),
            },
            CallError::InDoubt {
                detail: "timeout".into(),
                status: None,
            },
            CallError::Fatal {
                detail: "415".into(),
            },
        ] {
            assert_eq!(attempts_until_given_up(&policy(3), &e), 1, "{e:?}");
        }
    }

    #[test]
    fn a_quick_error_answer_goes_at_once_in_the_budget_a_stall_after_its_settle_the_rest_waits() {
        assert_eq!(pace(&transient(false)), Pace::Budgeted);
        assert_eq!(pace(&transient(true)), Pace::AfterStall);
        // A service asking for a wait, or one that did not answer, or told to slow
        // down, waits for the backoff.
        let asked = CallError::Transient {
            detail: "503".into(),
            retry_after: Some(Duration::from_secs(2)),
            slow: false,
            status: Some(503),
        };
        assert_eq!(pace(&asked), Pace::Backoff);
        for status in [None, Some(429), Some(503)] {
            for slow in [false, true] {
                let e = CallError::Transient {
                    detail: "refused or overloaded".into(),
                    retry_after: None,
                    slow,
                    status,
                };
                assert_eq!(pace(&e), Pace::Backoff, "{status:?} slow {slow}");
            }
        }
        let in_doubt = CallError::InDoubt {
            detail: "no reply".into(),
            status: None,
        };
        assert_eq!(pace(&in_doubt), Pace::Backoff);
    }

    #[test]
    fn a_status_update_is_never_given_up_and_its_delay_is_capped() {
        let p = RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        };
        let mut attempts = Attempts::default();
        let delays: Vec<Duration> = (0..50)
            .map(|_| p.status_delay(&mut attempts, &transient(false), 1.0))
            .collect();
        assert_eq!(attempts.made, 50);
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert!(delays.iter().all(|d| *d <= p.cap), "{delays:?}");
        assert_eq!(delays[49], p.cap);
        // A longer Retry-After is honoured up to the cap.
        let asked = CallError::Transient {
            detail: "503".into(),
            retry_after: Some(Duration::from_secs(3)),
            slow: false,
            status: Some(503),
        };
        assert_eq!(
            p.status_delay(&mut Attempts::default(), &asked, 0.0),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_slow_failure_is_retried_only_once() {
        assert_eq!(attempts_until_given_up(&policy(5), &transient(true)), 2);
        // A fast failure before the slow ones does not count as slow.
        let mut attempts = Attempts::default();
        let p = policy(5);
        assert!(
            p.after_failure(&mut attempts, &transient(false), 0.0)
                .is_some()
        );
        assert!(
            p.after_failure(&mut attempts, &transient(true), 0.0)
                .is_some()
        );
        assert!(
            p.after_failure(&mut attempts, &transient(true), 0.0)
                .is_none()
        );
        assert_eq!(attempts.made, 3);
    }
}

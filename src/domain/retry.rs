//! When to dial again: one pure function of the attempt that failed and the provider's hint.

use std::time::Duration;

/// How far a delay may stray from its nominal value, either way, so that calls that failed
/// together do not all come back at the same instant.
const JITTER: f64 = 0.1;
/// The longest a `Retry-After` from the provider is honoured for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The shortest wait after a 429, whatever its `Retry-After` says.
pub const MIN_RATE_LIMIT_DELAY: Duration = Duration::from_secs(1);

/// `RETRY_BASE_DELAY × 2^(attempt−1)`, capped at `RETRY_MAX_DELAY`, with jitter; per
/// outcome, whether it is retried at all (`RETRY_OUTCOMES`) and from which base
/// (`RETRY_DELAY_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Dial attempts per call, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub outcomes: PerOutcome,
}

/// The provider's outcomes of a call that did not complete, which may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedOutcome {
    Failed,
    Busy,
    NoAnswer,
    Voicemail,
}

impl FailedOutcome {
    pub const ALL: [FailedOutcome; 4] = [Self::Failed, Self::Busy, Self::NoAnswer, Self::Voicemail];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "FAILED",
            Self::Busy => "BUSY",
            Self::NoAnswer => "NO_ANSWER",
            Self::Voicemail => "VOICEMAIL",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(name.trim()))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What `RETRY_OUTCOMES` and `RETRY_DELAY_*` say about each [`FailedOutcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerOutcome {
    retried: [bool; 4],
    base_delay: [Option<Duration>; 4],
}

impl Default for PerOutcome {
    fn default() -> Self {
        Self::EVERY
    }
}

impl PerOutcome {
    /// Every outcome retried, each from `RETRY_BASE_DELAY` (the default).
    pub const EVERY: PerOutcome = PerOutcome {
        retried: [true; 4],
        base_delay: [None; 4],
    };

    pub fn new(retried: &[FailedOutcome], delays: &[(FailedOutcome, Duration)]) -> Self {
        let mut this = Self {
            retried: [false; 4],
            base_delay: [None; 4],
        };
        for outcome in retried {
            this.retried[outcome.index()] = true;
        }
        for (outcome, delay) in delays {
            this.base_delay[outcome.index()] = Some(*delay);
        }
        this
    }

    pub fn retries(&self, outcome: FailedOutcome) -> bool {
        self.retried[outcome.index()]
    }

    pub fn base_delay(&self, outcome: FailedOutcome) -> Option<Duration> {
        self.base_delay[outcome.index()]
    }

    /// These settings narrowed by a campaign's: only the outcomes both retry (`None`: all of
    /// these), each from the campaign's delay where it sets one.
    pub fn narrowed(
        &self,
        retried: Option<&[FailedOutcome]>,
        delays: &[(FailedOutcome, Duration)],
    ) -> Self {
        let mut this = *self;
        if let Some(retried) = retried {
            for outcome in FailedOutcome::ALL {
                this.retried[outcome.index()] &= retried.contains(&outcome);
            }
        }
        for (outcome, delay) in delays {
            this.base_delay[outcome.index()] = Some(*delay);
        }
        this
    }
}

/// What to do after an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Dial again after this long.
    RetryAfter(Duration),
    /// No attempts remain: the call has failed.
    GiveUp,
}

impl RetryPolicy {
    /// After attempt `attempt` (from 1) failed. `hint` is the provider's `Retry-After`, which
    /// is honoured as a floor; `unit` is a uniform random number in `[0, 1)` for the jitter
    /// (passed in so that the function stays pure and testable).
    pub fn after_failure(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        RetryDecision::RetryAfter(self.backoff(attempt, hint, unit))
    }

    /// After attempt `attempt` ended with the provider's `outcome`: given up at once when
    /// `RETRY_OUTCOMES` leaves the outcome out, else retried from its own base delay.
    pub fn after_outcome(&self, outcome: FailedOutcome, attempt: u32, unit: f64) -> RetryDecision {
        if !self.outcomes.retries(outcome) || attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let base = self.outcomes.base_delay(outcome).unwrap_or(self.base_delay);
        RetryDecision::RetryAfter(self.backoff_from(base, attempt, None, unit))
    }

    /// The wait after attempt `attempt` failed, whatever the attempts left.
    pub fn backoff(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> Duration {
        self.backoff_from(self.base_delay, attempt, hint, unit)
    }

    fn backoff_from(
        &self,
        base: Duration,
        attempt: u32,
        hint: Option<Duration>,
        unit: f64,
    ) -> Duration {
        let doublings = attempt.saturating_sub(1).min(62);
        let nominal = base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
        let jittered = nominal.mul_f64(factor).min(self.max_delay);
        match hint {
            Some(hint) => jittered.max(hint.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// The wait after the `times`-th 429 in a row (from 1) to one attempt, which is not an
    /// attempt: the provider's `Retry-After` when it gave one, else the base delay; never
    /// less than [`MIN_RATE_LIMIT_DELAY`], and doubling with each 429 in a row (so a
    /// provider that keeps answering `Retry-After: 0` is asked less and less often),
    /// capped at `RETRY_MAX_DELAY` or the `Retry-After`, whichever is longer.
    pub fn after_rate_limit(&self, times: u32, hint: Option<Duration>, unit: f64) -> Duration {
        let first = match hint {
            Some(hint) => hint.min(MAX_RETRY_AFTER).max(MIN_RATE_LIMIT_DELAY),
            None => self.backoff(1, None, unit).max(MIN_RATE_LIMIT_DELAY),
        };
        let grown = first
            .checked_mul(1u32 << times.saturating_sub(1).min(20))
            .unwrap_or(Duration::MAX);
        grown.min(self.max_delay.max(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(30 * 60),
        outcomes: PerOutcome::EVERY,
    };

    #[test]
    fn outcomes_left_out_are_not_retried_and_each_may_have_its_own_delay() {
        use FailedOutcome::*;
        let policy = RetryPolicy {
            outcomes: PerOutcome::new(&[Busy, NoAnswer], &[(Busy, Duration::from_secs(600))]),
            ..POLICY
        };
        assert_eq!(policy.after_outcome(Failed, 1, 0.5), RetryDecision::GiveUp);
        assert_eq!(
            policy.after_outcome(Voicemail, 1, 0.5),
            RetryDecision::GiveUp
        );
        assert_eq!(
            policy.after_outcome(Busy, 1, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(600))
        );
        assert_eq!(
            policy.after_outcome(Busy, 2, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(1200))
        );
        assert_eq!(
            policy.after_outcome(NoAnswer, 1, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(policy.after_outcome(Busy, 3, 0.5), RetryDecision::GiveUp);
        assert_eq!(FailedOutcome::parse(" no_answer"), Some(NoAnswer));
    }

    #[test]
    fn delays_double_from_the_base() {
        assert_eq!(POLICY.backoff(1, None, 0.5), Duration::from_secs(30));
        assert_eq!(POLICY.backoff(2, None, 0.5), Duration::from_secs(60));
        assert_eq!(POLICY.backoff(3, None, 0.5), Duration::from_secs(120));
    }

    #[test]
    fn delays_are_capped() {
        assert_eq!(POLICY.backoff(7, None, 0.5), Duration::from_secs(30 * 60));
        assert_eq!(
            POLICY.backoff(u32::MAX, None, 1.0),
            Duration::from_secs(30 * 60)
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(POLICY.backoff(1, None, 0.0), Duration::from_secs(27));
        assert_eq!(POLICY.backoff(1, None, 1.0), Duration::from_secs(33));
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            POLICY.backoff(1, Some(Duration::from_secs(90)), 0.5),
            Duration::from_secs(90)
        );
        assert_eq!(
            POLICY.backoff(2, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(60)
        );
        assert_eq!(
            POLICY.backoff(1, Some(Duration::from_secs(86_400)), 0.5),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn gives_up_after_the_last_attempt() {
        assert!(matches!(
            POLICY.after_failure(1, None, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert!(matches!(
            POLICY.after_failure(2, None, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(POLICY.after_failure(3, None, 0.5), RetryDecision::GiveUp);
        let once = RetryPolicy {
            max_attempts: 1,
            ..POLICY
        };
        assert_eq!(once.after_failure(1, None, 0.5), RetryDecision::GiveUp);
    }

    #[test]
    fn rate_limits_wait_as_asked() {
        assert_eq!(
            POLICY.after_rate_limit(1, Some(Duration::from_secs(5)), 0.5),
            Duration::from_secs(5)
        );
        assert_eq!(
            POLICY.after_rate_limit(1, None, 0.5),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn repeated_rate_limits_wait_longer_and_never_less_than_a_second() {
        let zero = Some(Duration::ZERO);
        assert_eq!(
            POLICY.after_rate_limit(1, zero, 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(
            POLICY.after_rate_limit(2, zero, 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(
            POLICY.after_rate_limit(5, zero, 0.5),
            Duration::from_secs(16)
        );
        // Capped by RETRY_MAX_DELAY...
        assert_eq!(
            POLICY.after_rate_limit(30, zero, 0.5),
            Duration::from_secs(30 * 60)
        );
        // ...unless the provider asked for longer.
        assert_eq!(
            POLICY.after_rate_limit(30, Some(Duration::from_secs(3600)), 0.5),
            Duration::from_secs(3600)
        );
    }
}

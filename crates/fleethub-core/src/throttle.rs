//! Rate limits as token buckets, pure: the caller passes the time (nanoseconds since an origin it chose)
//! and keeps the state. The hub builds its per-hub and per-device throttles on [`TokenBucket`].
//!
//! The bucket is the generic cell rate algorithm: it keeps one instant, the "theoretical arrival time" at
//! which the bucket would be full again, instead of a token count, so refilling needs no timer and no
//! floating point. A bucket holds `burst` tokens and refills at `rate` per second; an operation takes
//! `cost` tokens. Invariant (property-tested below): from a full bucket at time 0, the tokens admitted up
//! to any time `t` never exceed `rate * t + burst`, and a caller that waits `retry_after` is admitted.

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// The slowest refill: one token in 2^56 ns (about two years).
const MAX_INTERVAL: u64 = 1 << 56;

/// A rate: tokens per second, and how many may be taken at once after a quiet period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    /// Capacity of the bucket; at least one token.
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of `burst_seconds` worth of tokens (at least one).
    pub fn per_second(per_second: f64, burst_seconds: f64) -> Self {
        Self {
            per_second,
            burst: (per_second * burst_seconds).max(1.0),
        }
    }
}

/// Why a bucket refused: the time until the same request would be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// What [`TokenBucket::reserve`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Taken; go ahead now.
    Now,
    /// Taken, on the condition that the caller waits this long before it goes ahead.
    After(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds one token takes to refill, rounded up (so the bucket never admits more than its rate).
    interval: u64,
    /// `burst * interval`: how far ahead of now the arrival time may run.
    capacity: u64,
    /// When the bucket is full again; at or before now means full.
    full_at: u64,
}

impl TokenBucket {
    /// A full bucket. Rates at or below zero (or not finite) refill one token in about two years: only the burst.
    pub fn new(rate: Rate) -> Self {
        let interval = if rate.per_second.is_finite() && rate.per_second > 0.0 {
            (1e9 / rate.per_second)
                .ceil()
                .clamp(1.0, MAX_INTERVAL as f64) as u64
        } else {
            MAX_INTERVAL
        };
        let burst = if rate.burst.is_finite() {
            rate.burst.max(1.0)
        } else {
            1.0
        };
        // Whole nanoseconds, rounded down: never more than `burst` tokens at once.
        let capacity = (burst * interval as f64)
            .floor()
            .min((u64::MAX >> 2) as f64) as u64;
        Self {
            interval,
            capacity: capacity.max(interval),
            full_at: 0,
        }
    }

    fn cost_nanos(&self, cost: u32) -> u64 {
        self.interval.saturating_mul(u64::from(cost.max(1)))
    }

    /// Takes `cost` tokens if the bucket holds them at `now`, or says how long until it would.
    pub fn try_take(&mut self, now: u64, cost: u32) -> Result<(), Refused> {
        match self.reserve(now, cost, Duration::ZERO) {
            Ok(_) => Ok(()),
            Err(refused) => Err(refused),
        }
    }

    /// Takes `cost` tokens now or, if the caller agrees to wait at most `max_wait` for them, at a later
    /// instant (the tokens are spoken for meanwhile, so reservations are served in order). Refuses, taking
    /// nothing, when the wait would be longer.
    pub fn reserve(
        &mut self,
        now: u64,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, Refused> {
        let start = self.full_at.max(now);
        let next_full_at = start.saturating_add(self.cost_nanos(cost));
        let earliest = next_full_at.saturating_sub(self.capacity);
        if earliest <= now {
            self.full_at = next_full_at;
            return Ok(Reservation::Now);
        }
        let wait = Duration::from_nanos(earliest - now);
        if wait <= max_wait {
            self.full_at = next_full_at;
            Ok(Reservation::After(wait))
        } else {
            Err(Refused { retry_after: wait })
        }
    }

    /// Whether the bucket is full at `now`: forgetting it and starting again with a new one changes nothing.
    pub fn is_full(&self, now: u64) -> bool {
        self.full_at <= now
    }

    /// Tokens refilled per second, after rounding the refill interval (for display).
    pub fn effective_rate(&self) -> f64 {
        NANOS_PER_SECOND as f64 / self.interval as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_admits_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(Rate {
            per_second: 10.0,
            burst: 5.0,
        });
        for _ in 0..5 {
            assert_eq!(bucket.try_take(0, 1), Ok(()));
        }
        let refused = bucket.try_take(0, 1).expect_err("the burst is spent");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert!(bucket.try_take(SECOND / 10 - 1, 1).is_err());
        assert_eq!(bucket.try_take(SECOND / 10, 1), Ok(()));
        // A second later ten more tokens came back, but never more than the burst.
        let mut admitted = 0;
        while bucket.try_take(SECOND * 5, 1).is_ok() {
            admitted += 1;
        }
        assert_eq!(admitted, 5);
        assert!(!bucket.is_full(SECOND * 5));
        assert!(bucket.is_full(SECOND * 6));
    }

    #[test]
    fn a_costly_operation_takes_several_tokens() {
        let mut bucket = TokenBucket::new(Rate::per_second(40.0, 1.0));
        assert_eq!(bucket.try_take(0, 32), Ok(()));
        assert!(bucket.try_take(0, 9).is_err());
        assert_eq!(bucket.try_take(0, 8), Ok(()));
        assert_eq!(
            bucket.try_take(0, 1),
            Err(Refused {
                retry_after: Duration::from_millis(25)
            })
        );
    }

    #[test]
    fn reservations_queue_up_to_the_longest_wait() {
        let mut bucket = TokenBucket::new(Rate {
            per_second: 10.0,
            burst: 1.0,
        });
        let max_wait = Duration::from_millis(250);
        assert_eq!(bucket.reserve(0, 1, max_wait), Ok(Reservation::Now));
        assert_eq!(
            bucket.reserve(0, 1, max_wait),
            Ok(Reservation::After(Duration::from_millis(100)))
        );
        assert_eq!(
            bucket.reserve(0, 1, max_wait),
            Ok(Reservation::After(Duration::from_millis(200)))
        );
        assert_eq!(
            bucket.reserve(0, 1, max_wait),
            Err(Refused {
                retry_after: Duration::from_millis(300)
            })
        );
        // The refusal took nothing: at 100 ms the queue is one shorter.
        assert_eq!(
            bucket.reserve(SECOND / 10, 1, max_wait),
            Ok(Reservation::After(Duration::from_millis(200)))
        );
    }

    #[test]
    fn degenerate_rates_admit_only_the_burst() {
        for per_second in [0.0, -3.0, f64::NAN] {
            let mut bucket = TokenBucket::new(Rate {
                per_second,
                burst: 2.0,
            });
            assert!(bucket.try_take(0, 1).is_ok());
            assert!(bucket.try_take(0, 1).is_ok());
            assert!(bucket.try_take(SECOND * 3600, 1).is_err());
        }
    }

    proptest! {
        /// Never more than `rate * t + burst` tokens by time `t`, whatever the pattern of requests.
        #[test]
        fn admitted_tokens_never_exceed_rate_times_time_plus_burst(
            per_second in 0.5f64..5_000.0,
            burst in 1.0f64..200.0,
            steps in proptest::collection::vec((0u64..50_000_000, 1u32..5, 0u64..20_000_000), 1..400),
        ) {
            let rate = Rate { per_second, burst };
            let mut bucket = TokenBucket::new(rate);
            let mut now = 0u64;
            let mut admitted = 0u64;
            // The latest instant an admitted request goes ahead: by then all of them have.
            let mut horizon = 0u64;
            for (advance, cost, max_wait) in steps {
                now += advance;
                horizon = horizon.max(now);
                match bucket.reserve(now, cost, Duration::from_nanos(max_wait)) {
                    Ok(Reservation::Now) => admitted += u64::from(cost),
                    Ok(Reservation::After(wait)) => {
                        prop_assert!(wait <= Duration::from_nanos(max_wait));
                        horizon = horizon.max(now + wait.as_nanos() as u64);
                        admitted += u64::from(cost);
                    }
                    Err(refused) => prop_assert!(refused.retry_after > Duration::from_nanos(max_wait)),
                }
                let bound = per_second * horizon as f64 / 1e9 + burst;
                prop_assert!(admitted as f64 <= bound + 1e-6, "{admitted} > {bound} at {horizon}");
            }
        }

        /// A refused caller that waits `retry_after` is admitted, if nobody took tokens meanwhile.
        #[test]
        fn waiting_retry_after_is_enough(
            per_second in 0.5f64..5_000.0,
            burst in 1.0f64..50.0,
            taken in 0u32..100,
            cost in 1u32..4,
        ) {
            prop_assume!(f64::from(cost) <= burst);
            let mut bucket = TokenBucket::new(Rate { per_second, burst });
            for _ in 0..taken {
                let _ = bucket.try_take(0, 1);
            }
            match bucket.try_take(0, cost) {
                Ok(()) => {}
                Err(refused) => {
                    let later = refused.retry_after.as_nanos() as u64;
                    prop_assert_eq!(bucket.try_take(later, cost), Ok(()));
                }
            }
        }
    }
}

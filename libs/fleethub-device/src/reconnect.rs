//! Reconnection timing without I/O: the exponential backoff with full jitter between attempts, the random
//! numbers that jitter it, and when a SAS token is renewed. Time and randomness are passed in.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use tokio::time::Instant;

use crate::options::ReconnectPolicy;

/// No delay bound is shorter than this: a zero bound would retry in a hot loop.
const MIN_DELAY: Duration = Duration::from_millis(1);
/// Tokens are renewed when this much of their lifetime is left, or a fifth of it for short lifetimes.
const RENEWAL_MARGIN: Duration = Duration::from_secs(120);

/// Delays between reconnection attempts: attempt `n` of an outage waits a uniformly random time in
/// `[0, cap(n)]` with `cap(n) = min(max, initial * 2^n)` ("full jitter").
///
/// Invariants: every delay lies in `[0, cap]` for the cap current when it was drawn; caps never decrease
/// until [`Backoff::reset`]; no cap exceeds `max` (nor is below 1 ms).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Delays drawn since the last reset.
    drawn: u32,
}

impl Backoff {
    pub fn new(policy: &ReconnectPolicy) -> Self {
        // A cap must fit u64 nanoseconds (584 years) for the arithmetic in `next_delay`.
        let limit = Duration::from_nanos(u64::MAX);
        Self {
            initial: policy.initial_delay.clamp(MIN_DELAY, limit),
            max: policy.max_delay.clamp(MIN_DELAY, limit),
            drawn: 0,
        }
    }

    /// The bound of the next delay.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.drawn).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, given a uniformly random `random`, and doubles the bound for the one after.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let cap = self.cap();
        self.drawn = self.drawn.saturating_add(1);
        fraction(cap, random)
    }

    /// Back to the initial bound, once a connection has proved stable.
    pub fn reset(&mut self) {
        self.drawn = 0;
    }

    /// How long a connection must stay up before the backoff resets: one maximal delay, so that a hub that
    /// accepts and then drops every connection still sees growing delays.
    pub fn stable_after(&self) -> Duration {
        self.max
    }
}

/// A small per-client random number generator (SplitMix64) for jitter. Not cryptographic; it only has to
/// differ between clients, which the per-process random seed of [`RandomState`] and the client's identity
/// ensure without another dependency.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub fn seeded(seed: impl Hash) -> Self {
        Self(RandomState::new().hash_one(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }
}

/// When the current connection's token runs out, as the connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenClock {
    /// No expiry to watch: the token's expiry is unknown (the hub decides).
    Unwatched,
    /// A token the client signed. From `renew_at` the client reconnects with a fresh token as soon as no
    /// operation is waiting for the hub, and at `renew_by` whatever is waiting (it is re-sent afterwards).
    Renewable {
        renew_at: Instant,
        renew_by: Instant,
    },
    /// A token from the connection string: the client cannot replace it, so the connection ends at `expires_at`.
    Fixed { expires_at: Instant },
}

impl TokenClock {
    /// For a token the client signed at `now` with lifetime `ttl`, valid for `remaining` from now (the
    /// lifetime minus the fraction of a second lost to `se` being whole seconds). Renewal starts between
    /// one and one and a half margins before expiry, spread by `random` so that clients connected together
    /// (a fleet after a hub restart) do not all renew together; it is forced half a margin later, still at
    /// least half a margin before expiry.
    pub fn renewable(now: Instant, remaining: Duration, ttl: Duration, random: u64) -> Self {
        let margin = renewal_margin(ttl);
        let spread = fraction(margin / 2, random);
        let renew_at = now.checked_add(remaining.saturating_sub(margin + spread));
        match renew_at.zip(renew_at.and_then(|at| at.checked_add(margin / 2))) {
            Some((renew_at, renew_by)) => Self::Renewable { renew_at, renew_by },
            // Beyond what the clock can represent: nothing to renew in this program's lifetime.
            None => Self::Unwatched,
        }
    }

    /// For a token the client cannot renew, valid for `remaining` from `now`.
    pub fn fixed(now: Instant, remaining: Duration) -> Self {
        match now.checked_add(remaining) {
            Some(expires_at) => Self::Fixed { expires_at },
            None => Self::Unwatched,
        }
    }

    /// The instant the task must wake for this clock, given whether renewal is already due.
    pub fn deadline(&self, renewal_due: bool) -> Option<Instant> {
        match *self {
            TokenClock::Unwatched => None,
            TokenClock::Renewable { renew_at, renew_by } => {
                Some(if renewal_due { renew_by } else { renew_at })
            }
            TokenClock::Fixed { expires_at } => Some(expires_at),
        }
    }
}

/// How long before expiry a token is renewed at the latest: 2 minutes (Azure's SDKs), or a fifth of the
/// lifetime when that is shorter, so a 3 s token is renewed after at most 2.4 s.
pub(crate) fn renewal_margin(ttl: Duration) -> Duration {
    (ttl / 5).min(RENEWAL_MARGIN)
}

/// `random / u64::MAX` of `whole`, exactly: never more than `whole`.
fn fraction(whole: Duration, random: u64) -> Duration {
    let nanos = u128::from(u64::try_from(whole.as_nanos()).unwrap_or(u64::MAX));
    let part = nanos * u128::from(random) / u128::from(u64::MAX);
    Duration::from_nanos(u64::try_from(part).expect("at most `whole`, which fits u64"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(
            &ReconnectPolicy::default()
                .with_initial_delay(Duration::from_millis(initial_ms))
                .with_max_delay(Duration::from_millis(max_ms)),
        )
    }

    #[test]
    fn caps_double_from_the_initial_delay_up_to_the_maximum() {
        let mut backoff = backoff(100, 1000);
        let caps: Vec<u64> = (0..6)
            .map(|_| {
                let cap = backoff.cap();
                backoff.next_delay(u64::MAX);
                cap.as_millis() as u64
            })
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.cap(), Duration::from_millis(100));
    }

    #[test]
    fn random_extremes_give_zero_and_the_cap() {
        let mut backoff = backoff(100, 1000);
        assert_eq!(backoff.next_delay(0), Duration::ZERO);
        assert_eq!(backoff.next_delay(u64::MAX), Duration::from_millis(200));
        assert_eq!(
            backoff.next_delay(u64::MAX / 2),
            Duration::from_nanos(199_999_999)
        );
    }

    #[test]
    fn zero_bounds_are_raised_to_one_millisecond() {
        let mut backoff = backoff(0, 0);
        assert_eq!(backoff.cap(), MIN_DELAY);
        assert!(backoff.next_delay(u64::MAX) <= MIN_DELAY);
    }

    #[test]
    fn jitter_differs_between_generators_and_between_draws() {
        let mut first = Jitter::seeded("dev1");
        let mut second = Jitter::seeded("dev1");
        let a = first.next_u64();
        assert_ne!(a, first.next_u64());
        assert_ne!(a, second.next_u64(), "seeds differ per generator");
    }

    #[test]
    fn short_tokens_renew_after_four_fifths_and_long_ones_two_minutes_early() {
        let now = Instant::now();
        let three = Duration::from_secs(3);
        assert_eq!(
            TokenClock::renewable(now, three, three, 0),
            TokenClock::Renewable {
                renew_at: now + Duration::from_millis(2400),
                renew_by: now + Duration::from_millis(2700),
            }
        );
        let hour = Duration::from_secs(3600);
        let long = TokenClock::renewable(now, hour - Duration::from_millis(300), hour, 0);
        assert_eq!(
            long.deadline(false),
            Some(now + Duration::from_secs(3480) - Duration::from_millis(300))
        );
        assert_eq!(
            long.deadline(true),
            Some(now + Duration::from_secs(3540) - Duration::from_millis(300))
        );
        // A token already past its renewal point renews at once.
        let late = TokenClock::renewable(now, Duration::ZERO, hour, 0);
        assert_eq!(late.deadline(false), Some(now));
    }

    #[test]
    fn renewal_is_spread_over_half_a_margin_and_forced_half_a_margin_before_expiry() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let earliest = TokenClock::renewable(now, hour, hour, u64::MAX);
        assert_eq!(
            earliest,
            TokenClock::Renewable {
                renew_at: now + Duration::from_secs(3420),
                renew_by: now + Duration::from_secs(3480),
            }
        );
        for random in [0, 1, u64::MAX / 3, u64::MAX] {
            let TokenClock::Renewable { renew_at, renew_by } =
                TokenClock::renewable(now, hour, hour, random)
            else {
                panic!("renewable");
            };
            assert!(renew_at >= now + Duration::from_secs(3420));
            assert!(renew_at <= now + Duration::from_secs(3480));
            assert!(renew_by <= now + hour - Duration::from_secs(60));
        }
    }

    #[test]
    fn expiries_beyond_the_clock_are_not_watched() {
        let now = Instant::now();
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(
            TokenClock::renewable(now, forever, forever, 0),
            TokenClock::Unwatched
        );
        assert_eq!(TokenClock::fixed(now, forever), TokenClock::Unwatched);
        assert_eq!(
            TokenClock::fixed(now, Duration::from_secs(2)),
            TokenClock::Fixed {
                expires_at: now + Duration::from_secs(2)
            }
        );
    }

    proptest! {
        #[test]
        fn delays_stay_within_caps_that_never_decrease_and_reset_restores_the_first(
            initial_ms in 0u64..5_000,
            max_ms in 0u64..120_000,
            randoms in proptest::collection::vec(any::<u64>(), 1..80),
            reset_at in 0usize..80,
        ) {
            let mut backoff = backoff(initial_ms, max_ms);
            let first_cap = backoff.cap();
            let ceiling = Duration::from_millis(max_ms).max(MIN_DELAY);
            prop_assert!(first_cap <= ceiling);
            prop_assert!(first_cap >= MIN_DELAY);
            let mut previous_cap = Duration::ZERO;
            for (index, random) in randoms.into_iter().enumerate() {
                if index == reset_at {
                    backoff.reset();
                    prop_assert_eq!(backoff.cap(), first_cap);
                    previous_cap = Duration::ZERO;
                }
                let cap = backoff.cap();
                prop_assert!(cap >= previous_cap, "caps never decrease: {:?} after {:?}", cap, previous_cap);
                prop_assert!(cap <= ceiling, "cap {:?} above the maximum {:?}", cap, ceiling);
                let delay = backoff.next_delay(random);
                prop_assert!(delay <= cap, "delay {:?} above its cap {:?}", delay, cap);
                previous_cap = cap;
            }
        }
    }
}

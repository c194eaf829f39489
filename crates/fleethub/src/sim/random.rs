//! The simulator's randomness: which devices churn, which updates fail, the phase of each device's timers.
//! None of it is a secret (the device keys come from the operating system, see `registry.rs`), so a
//! SplitMix64 sequence seeded once from the operating system does, shared by every task without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SecureRandom as _;

/// A SplitMix64 generator whose state is one atomic counter: each draw takes the next point of the sequence.
#[derive(Debug)]
pub(super) struct Random {
    state: AtomicU64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Random {
    /// Seeded from the operating system.
    pub(super) fn from_os() -> anyhow::Result<Random> {
        let mut seed = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| anyhow::anyhow!("the operating system's random source failed"))?;
        Ok(Random::seeded(u64::from_le_bytes(seed)))
    }

    pub(super) fn seeded(seed: u64) -> Random {
        Random {
            state: AtomicU64::new(seed),
        }
    }

    pub(super) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn next_f64(&self) -> f64 {
        // The top 53 bits, the precision of an f64.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, bound)`; `bound` must not be 0.
    pub(super) fn below(&self, bound: u64) -> u64 {
        // Multiply-shift: the bias is at most bound / 2^64, nothing for a simulator.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `probability` (0 never, 1 always).
    pub(super) fn chance(&self, probability: f64) -> bool {
        self.next_f64() < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_their_ranges() {
        let random = Random::seeded(7);
        for _ in 0..10_000 {
            let unit = random.next_f64();
            assert!((0.0..1.0).contains(&unit), "{unit}");
            assert!(random.below(3) < 3);
            assert!(!random.chance(0.0));
            assert!(random.chance(1.0));
        }
    }

    #[test]
    fn a_chance_is_taken_about_as_often_as_asked() {
        let random = Random::seeded(42);
        let taken = (0..100_000).filter(|_| random.chance(0.1)).count();
        assert!((9_000..11_000).contains(&taken), "{taken}");
    }
}

//! The wave plan: which targeted device is in which wave, and in which order the devices of a wave start.
//!
//! The frozen target set is sorted, shuffled with the rollout's seed (so each wave is a random sample of the
//! fleet and the order inside it is random), then cut at the waves' cumulative sizes. The same seed and
//! target set always give the same plan; the store keeps each device's wave and position anyway, so a
//! restored rollout reads its plan back instead of recomputing it.

use std::collections::HashMap;

use crate::executor::shuffle;
use crate::identity::IdentityKey;

use super::spec::WaveSize;

/// Where each wave ends among `total` devices (exclusive, cumulative): never going down, never beyond
/// `total`, the last exactly `total`. A wave whose end equals the previous one is empty.
pub fn wave_ends(total: u64, sizes: &[WaveSize]) -> Vec<u64> {
    let mut ends = Vec::with_capacity(sizes.len());
    let mut previous = 0;
    for size in sizes {
        previous = previous.max(size.cumulative(total));
        ends.push(previous);
    }
    if let Some(last) = ends.last_mut() {
        *last = total;
    }
    ends
}

/// A device's place in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// From 0.
    pub wave: usize,
    /// Its rank in the shuffled order of all targets: devices start in this order within a wave.
    pub position: u64,
}

/// The devices of each wave, in start order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WavePlan {
    waves: Vec<Vec<IdentityKey>>,
    placements: HashMap<IdentityKey, Placement>,
}

impl WavePlan {
    /// Plans `targets` (duplicates dropped) over waves of the given cumulative sizes.
    pub fn new(mut targets: Vec<IdentityKey>, sizes: &[WaveSize], seed: u64) -> WavePlan {
        targets.sort();
        targets.dedup();
        shuffle(&mut targets, seed);
        let ends = wave_ends(targets.len() as u64, sizes);
        let mut waves = Vec::with_capacity(ends.len());
        let mut placements = HashMap::with_capacity(targets.len());
        let mut start = 0usize;
        let mut keys = targets.into_iter();
        for (wave, end) in ends.into_iter().enumerate() {
            let end = end as usize;
            let members: Vec<IdentityKey> = keys.by_ref().take(end - start).collect();
            for (offset, key) in members.iter().enumerate() {
                placements.insert(
                    key.clone(),
                    Placement {
                        wave,
                        position: (start + offset) as u64,
                    },
                );
            }
            waves.push(members);
            start = end;
        }
        WavePlan { waves, placements }
    }

    /// The plan as stored: each device with its wave and position, for `wave_count` waves. Devices whose
    /// wave is beyond `wave_count` are put in the last wave.
    pub fn from_placements(
        wave_count: usize,
        placements: impl IntoIterator<Item = (IdentityKey, Placement)>,
    ) -> WavePlan {
        let wave_count = wave_count.max(1);
        let mut ordered: Vec<(IdentityKey, Placement)> = placements
            .into_iter()
            .map(|(key, placement)| {
                let wave = placement.wave.min(wave_count - 1);
                (key, Placement { wave, ..placement })
            })
            .collect();
        ordered.sort_by_key(|(_, placement)| (placement.wave, placement.position));
        let mut waves = vec![Vec::new(); wave_count];
        let mut index = HashMap::with_capacity(ordered.len());
        for (key, placement) in ordered {
            if index.contains_key(&key) {
                continue;
            }
            waves[placement.wave].push(key.clone());
            index.insert(key, placement);
        }
        WavePlan {
            waves,
            placements: index,
        }
    }

    pub fn wave_count(&self) -> usize {
        self.waves.len()
    }

    /// The devices of wave `wave` (from 0) in start order.
    pub fn wave(&self, wave: usize) -> &[IdentityKey] {
        self.waves.get(wave).map_or(&[], Vec::as_slice)
    }

    pub fn placement(&self, key: &IdentityKey) -> Option<Placement> {
        self.placements.get(key).copied()
    }

    /// Every targeted device.
    pub fn len(&self) -> usize {
        self.placements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
    }

    /// Every device with its placement, by wave then position.
    pub fn placements(&self) -> impl Iterator<Item = (&IdentityKey, Placement)> + '_ {
        self.waves.iter().flatten().map(|key| {
            (
                key,
                *self
                    .placements
                    .get(key)
                    .expect("every planned device has a placement"),
            )
        })
    }
}

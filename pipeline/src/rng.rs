//! Deterministic seeds per (pipeline seed, epoch, sample, stage).
//!
//! The hash is written out here rather than taken from `std::hash`, whose output may change
//! between Rust releases: a pipeline must give the same augmentations next year.

/// FNV-1a over the parts, finished with SplitMix64 for good bit mixing.
pub fn sample_seed(seed: u64, epoch: u32, sample_id: &str, stage_index: usize, stage: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(&seed.to_le_bytes());
    h.write(&epoch.to_le_bytes());
    h.write(sample_id.as_bytes());
    h.write(&[0xff]);
    h.write(&(stage_index as u64).to_le_bytes());
    h.write(stage.as_bytes());
    splitmix64(h.0)
}

/// A stable 64-bit hash of bytes (for sharding and cache keys).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(bytes);
    splitmix64(h.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_stable_and_distinct() {
        // Pinned (value checked with an independent Python FNV-1a + SplitMix64): changing the
        // hash would silently change every pipeline's augmentations.
        assert_eq!(
            sample_seed(42, 0, "case_1", 3, "rand_flip"),
            0xbb25_1599_15be_e866
        );
        let base = sample_seed(42, 0, "case_1", 3, "rand_flip");
        assert_ne!(base, sample_seed(43, 0, "case_1", 3, "rand_flip"));
        assert_ne!(base, sample_seed(42, 1, "case_1", 3, "rand_flip"));
        assert_ne!(base, sample_seed(42, 0, "case_2", 3, "rand_flip"));
        assert_ne!(base, sample_seed(42, 0, "case_1", 4, "rand_flip"));
        assert_ne!(base, sample_seed(42, 0, "case_1", 3, "rand_rot90"));
    }
}

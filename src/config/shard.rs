//! Sharding: `--shard K/N` (or `exporter.shard = "K/N"`) makes this replica probe the targets
//! that rendezvous hashing of their names gives to replica K of N, and no other.
//!
//! Rendezvous (highest random weight) hashing: every replica scores every target name and
//! the highest score wins. A target's owner depends on its name and N alone (not on the other
//! targets, their order or the file), so every replica computes the same assignment on its
//! own; going from N to N + 1 replicas moves exactly the targets the new replica wins, about
//! 1/(N + 1) of them, and none between the old replicas. (Jump hashing moves as few, but
//! rendezvous also stays balanced for any N and is these few lines.)

use std::fmt;

/// This replica's part: `index` of `count`, 1-based as written (`2/4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most replicas a shard can name: far above any sensible deployment.
pub const MAX_SHARDS: u32 = 1024;

impl Shard {
    /// Parses `K/N` with 1 <= K <= N <= [`MAX_SHARDS`].
    pub fn parse(text: &str) -> Result<Shard, String> {
        let expected = "expected K/N such as \"2/4\" (replica K of N, counting from 1)";
        let Some((k, n)) = text.trim().split_once('/') else {
            return Err(format!("\"{text}\" is not a shard; {expected}"));
        };
        let (Ok(index), Ok(count)) = (k.trim().parse::<u32>(), n.trim().parse::<u32>()) else {
            return Err(format!("\"{text}\" is not a shard; {expected}"));
        };
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "\"{text}\": the number of replicas must be 1 to {MAX_SHARDS}"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "\"{text}\": replica {index} does not exist; {expected}"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether this replica probes the target named `name`.
    pub fn owns(&self, name: &str) -> bool {
        owner(name, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The replica (1-based) of `count` that probes the target named `name`.
pub fn owner(name: &str, count: u32) -> u32 {
    let key = fnv1a(name.as_bytes());
    (1..=count)
        .max_by_key(|replica| mix(key ^ u64::from(*replica).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .unwrap_or(1)
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher promises neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_refuse_what_does_not_exist() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard::parse(" 1/1 ").unwrap().to_string(), "1/1");
        for bad in ["0/4", "5/4", "1/0", "a/4", "4", "1/2000", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_name_has_one_owner_and_the_split_is_even() {
        let names: Vec<String> = (0..20_000).map(|i| format!("t{i:05}")).collect();
        let mut per = [0usize; 4];
        for name in &names {
            let owners: Vec<u32> = (1..=4)
                .filter(|k| {
                    Shard {
                        index: *k,
                        count: 4,
                    }
                    .owns(name)
                })
                .collect();
            assert_eq!(owners.len(), 1, "{name}: {owners:?}");
            per[owners[0] as usize - 1] += 1;
        }
        for count in per {
            assert!((4_700..=5_300).contains(&count), "{per:?}");
        }
    }

    #[test]
    fn a_fifth_replica_takes_a_fifth_and_moves_nothing_else() {
        let mut moved = 0;
        for i in 0..20_000 {
            let name = format!("target-{i}");
            let (before, after) = (owner(&name, 4), owner(&name, 5));
            if before != after {
                assert_eq!(after, 5, "{name} moved between old replicas");
                moved += 1;
            }
        }
        // 1/5 of 20,000 = 4,000.
        assert!((3_700..=4_300).contains(&moved), "{moved}");
    }
}

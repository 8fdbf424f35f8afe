//! `[cell]` — The scheduling cell: key prefix and hash tag of every key, the Redis Cluster
//! slot a tag lands in, and names whose tags spread evenly over a cluster's primaries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellConfig {
    /// Key prefix of this deployment.
    pub prefix: String,
    /// Name of the scheduling cell; all keys share the hash tag `{prefix:name}`.
    pub name: String,
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            prefix: "switchyard".into(),
            name: "main".into(),
        }
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when non-empty) or of the whole key, mod 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// `count` cell names (`<base>-<n>`) whose tags `{prefix:name}` spread evenly over the
/// primaries of a cluster, given as each primary's slot ranges (from `CLUSTER SLOTS`):
/// cell k goes to the primary with the fewest cells so far, with the first suffix whose
/// slot it owns. Names picked by hand land where CRC16 puts them, often several on one
/// primary; this picks by the slot instead.
pub fn spread_names(
    prefix: &str,
    base: &str,
    count: usize,
    primaries: &[Vec<(u16, u16)>],
) -> Vec<String> {
    let mut load = vec![0usize; primaries.len()];
    let mut names: Vec<String> = Vec::with_capacity(count);
    let mut n = 0u32;
    for _ in 0..count {
        let Some(target) = (0..primaries.len()).min_by_key(|p| load[*p]) else {
            break;
        };
        // Each primary owns about 1/N of the slots: a match comes within a few tries.
        for _ in 0..100_000 {
            let name = format!("{base}-{n}");
            n += 1;
            let s = slot(&format!("{{{prefix}:{name}}}"));
            if primaries[target]
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&s))
            {
                load[target] += 1;
                names.push(name);
                break;
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Examples from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_eq!(slot("{switchyard:main}:node:a"), slot("{switchyard:main}"));
    }

    #[test]
    fn spread_names_give_each_primary_its_share() {
        let thirds = vec![vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)]];
        let names = spread_names("switchyard", "cell", 6, &thirds);
        assert_eq!(names.len(), 6);
        let mut per = [0; 3];
        for n in &names {
            let s = slot(&format!("{{switchyard:{n}}}"));
            per[thirds
                .iter()
                .position(|r| (r[0].0..=r[0].1).contains(&s))
                .unwrap()] += 1;
        }
        assert_eq!(per, [2, 2, 2], "{names:?}");
    }
}

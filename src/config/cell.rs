//! `[cell]` and `[[cells]]` — The scheduling cells: the key prefix, each cell's name (its
//! keys share the hash tag `{prefix:name}`) and the tenants it serves, the Redis Cluster
//! slot a tag lands in, and names whose tags spread evenly over a cluster's primaries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellConfig {
    /// Key prefix of this deployment.
    pub prefix: String,
    /// Name of the one scheduling cell when no `[[cells]]` are listed; all its keys share
    /// the hash tag `{prefix:name}`. Ignored when `[[cells]]` are listed.
    pub name: String,
}

/// `[[cells]]` — one scheduling cell of several: a name (its keys share the hash tag
/// `{prefix:name}`, one Redis slot) and the tenants whose nodes and sessions live in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    pub name: String,
    /// Tenants served by this cell (from the credential's `tenant`, or a frame's
    /// `tenant_id` in open mode). A tenant listed nowhere lives in the default cell.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// The cell of everyone without a listed tenant (public nodes and sessions unless a
    /// credential's `cell` claim names another). Exactly one cell is the default.
    #[serde(default)]
    pub default: bool,
}

fn valid_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The cells to serve: `[[cells]]`, or the one `[cell].name` (the default) when none are
/// listed. Checks names, the one default and that no tenant is in two cells; the error
/// names the field.
pub fn cells(
    cell: &CellConfig,
    list: &[CellSpec],
) -> Result<Vec<CellSpec>, (&'static str, String)> {
    if !valid_name(&cell.prefix) {
        return Err(("cell.prefix", "must be 1-64 of [A-Za-z0-9._-]".into()));
    }
    if list.is_empty() {
        if !valid_name(&cell.name) {
            return Err(("cell.name", "must be 1-64 of [A-Za-z0-9._-]".into()));
        }
        return Ok(vec![CellSpec {
            name: cell.name.clone(),
            tenants: Vec::new(),
            default: true,
        }]);
    }
    let mut names = std::collections::HashSet::new();
    let mut tenants = std::collections::HashMap::new();
    for c in list {
        if !valid_name(&c.name) {
            return Err((
                "cells.name",
                format!("{:?} must be 1-64 of [A-Za-z0-9._-]", c.name),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(("cells.name", format!("cell {:?} is listed twice", c.name)));
        }
        for t in &c.tenants {
            if !crate::protocol::valid_id(t) {
                return Err((
                    "cells.tenants",
                    format!("{t:?} is not a tenant id ([A-Za-z0-9_.-])"),
                ));
            }
            if let Some(other) = tenants.insert(t.as_str(), c.name.as_str()) {
                return Err((
                    "cells.tenants",
                    format!("tenant {t:?} is in cells {other:?} and {:?}", c.name),
                ));
            }
        }
    }
    match list.iter().filter(|c| c.default).count() {
        1 => Ok(list.to_vec()),
        0 => Err((
            "cells.default",
            "mark one cell `default = true` (it serves tenants listed nowhere)".into(),
        )),
        _ => Err(("cells.default", "only one cell may be the default".into())),
    }
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
    fn cells_need_one_default_and_disjoint_tenants() {
        let base = CellConfig::default();
        let one = cells(&base, &[]).unwrap();
        assert_eq!((one[0].name.as_str(), one[0].default), ("main", true));
        let spec = |name: &str, tenants: &[&str], default| CellSpec {
            name: name.into(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            default,
        };
        assert!(cells(&base, &[spec("a", &[], true), spec("b", &["x"], false)]).is_ok());
        let err = |l: &[CellSpec]| cells(&base, l).unwrap_err().0;
        assert_eq!(err(&[spec("a", &[], false)]), "cells.default");
        assert_eq!(
            err(&[spec("a", &[], true), spec("b", &[], true)]),
            "cells.default"
        );
        assert_eq!(
            err(&[spec("a", &["x"], true), spec("b", &["x"], false)]),
            "cells.tenants"
        );
        assert_eq!(
            err(&[spec("a", &[], true), spec("a", &[], false)]),
            "cells.name"
        );
        assert_eq!(err(&[spec("a{b}", &[], true)]), "cells.name");
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

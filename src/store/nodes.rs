//! Node operations: `register`, `heartbeat`, `node_offline`, `sweep` (node part), and the
//! read-only views the admin API and metrics use.
//!
//! Each write is exactly one script call; the docs of each function and the header of its
//! `lua/` file say the same thing.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{Output, Script, Store, StoreError, lua_list};
use crate::capabilities::Capabilities;

/// How a registration claims its node id (`register.lua` `ARGV[6]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeClaim {
    /// Minted by this instance: must be unused.
    Mint,
    /// The credential proves it is this node: may replace a live connection.
    Replace,
    /// A fleet credential: only if no live connection holds the id.
    Reconnect,
}

impl NodeClaim {
    fn as_str(self) -> &'static str {
        match self {
            NodeClaim::Mint => "mint",
            NodeClaim::Replace => "replace",
            NodeClaim::Reconnect => "reconnect",
        }
    }
}

/// Reply of `register.lua`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RegisterReply {
    /// The minted id exists already; mint another.
    Taken,
    /// A live connection (on `owner`) holds the id and this one may not take it.
    Conflict { owner: String },
    /// A reconnect (fleet credential) of an id whose record is another tenant's, or public
    /// for a tenant's credential and the reverse: refused, nothing changed.
    Foreign,
    /// The node is new to its fleet credential's count, which holds the most live nodes
    /// allowed already: refused (nothing written but the removal of members left behind and the
    /// `fleet:<fp>:pruned` mark).
    Limit { live: u64 },
    Ok {
        /// Grows with every registration of the id (Redis's commit order), above the
        /// caller's floor: orders two outcomes of this instance that arrive out of order.
        epoch: u64,
        state: String,
        added: u32,
        removed: u32,
        /// Token of a live older connection this registration replaced.
        replaced_conn: Option<String>,
        /// Instance that owned that older connection.
        replaced_owner: Option<String>,
    },
}

/// Reply of `heartbeat.lua`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HeartbeatReply {
    /// No record (expired, or Redis wiped): register again.
    Missing,
    /// Another connection owns the node; nothing changed.
    Stale { owner: Option<String> },
    /// The record is offline and its fleet credential has the most live nodes allowed:
    /// not revived (nothing written but the removal of members left behind and the
    /// `fleet:<fp>:pruned` mark).
    Limit { live: u64 },
    Ok {
        state: String,
        changed: bool,
        revived: bool,
    },
}

/// Reply of `node_offline.lua`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OfflineReply {
    Missing,
    Stale,
    Ok { state: String },
}

/// A node the sweep took offline, so its owner can close a socket that is still open.
#[derive(Debug, Deserialize, PartialEq, Clone)]
pub struct OfflineNode {
    pub node_id: String,
    pub owner: Option<String>,
    pub conn: Option<String>,
}

/// Reply of `sweep.lua`.
#[derive(Debug, Deserialize)]
pub struct SweepReply {
    #[serde(deserialize_with = "lua_list")]
    pub offline: Vec<OfflineNode>,
    /// Jobs past their deadline handled (failed over or failed).
    pub jobs: u32,
    /// Timeout cuts made.
    pub cuts: u32,
    /// Sessions whose reorder window ended.
    pub released: u32,
    /// A batch was full: more is due.
    pub more: bool,
}

/// Node-hash fields that follow from capabilities (written on register, and by a heartbeat
/// when they change).
pub fn capability_fields(caps: &Capabilities) -> Vec<(&'static str, String)> {
    let l = &caps.langs;
    let pairs = caps
        .pairs
        .as_ref()
        .map(|p| {
            p.iter()
                .map(|p| format!("{}:{}", p.src, p.tgt))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        ("asr_langs", l.asr_languages.join(",")),
        ("sem_langs", l.semantic_languages.join(",")),
        ("tts_langs", l.tts_languages.join(",")),
        ("pairs", pairs),
        ("services", caps.ready_services()),
        ("tenant", caps.tenant.clone().unwrap_or_default()),
        ("public", if caps.accept_public { "1" } else { "0" }.into()),
    ]
}

impl Store {
    fn node_keys(&self, node_id: &str) -> Vec<String> {
        let k = &self.keys;
        vec![
            k.node(node_id),
            k.node_pools(node_id),
            k.nodes_live(),
            k.nodes_index(),
            k.pools_index(),
        ]
    }

    /// `register.lua`: record capabilities, owner and connection token; join pools; the
    /// node's free capacity serves queued jobs (deliveries in the output).
    /// `extra` holds descriptive fields (version, hardware, capacity, ...); `epoch_floor`
    /// is the epoch of the id's live binding on this instance (`Connections::bind`);
    /// `fleet` the fleet credential that counts the node (`auth::Credential::fleet`), at
    /// most `limits.max_nodes_per_credential` of them.
    #[allow(clippy::too_many_arguments)] // one per ARGV of the script
    pub async fn register(
        &self,
        node_id: &str,
        claim: NodeClaim,
        conn: &str,
        caps: &Capabilities,
        extra: &[(&'static str, String)],
        epoch_floor: u64,
        fleet: Option<&str>,
    ) -> Result<Output<RegisterReply>, StoreError> {
        let mut fields = capability_fields(caps);
        fields.extend_from_slice(extra);
        let args = self
            .args()
            .s(node_id)
            .s(claim.as_str())
            .s(conn)
            .s(caps.signature())
            .s(epoch_floor)
            .s(fleet.unwrap_or_default())
            .s(fields.len())
            .fields(&fields)
            .all(caps.pools());
        self.run(Script::Register, &self.node_keys(node_id), args)
            .await
    }

    /// `heartbeat.lua`: refresh liveness, store load, apply capability changes, offer
    /// free capacity to queued jobs. `fleet`: the connection's fleet credential (its
    /// fingerprint, [`crate::auth::Credential::fleet`]), where an offline record the
    /// heartbeat revives is counted.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        conn: &str,
        caps: &Capabilities,
        load: &[(&'static str, String)],
        fleet: Option<&str>,
    ) -> Result<Output<HeartbeatReply>, StoreError> {
        let cap_fields = capability_fields(caps);
        let args = self
            .args()
            .s(node_id)
            .s(conn)
            .s(caps.signature())
            .s(load.len())
            .s(cap_fields.len())
            .s(fleet.unwrap_or(""))
            .fields(load)
            .fields(&cap_fields)
            .all(caps.pools());
        self.run(Script::Heartbeat, &self.node_keys(node_id), args)
            .await
    }

    /// `node_offline.lua`: the socket of `conn` closed; offline now (grace 0) or after grace.
    pub async fn node_offline(
        &self,
        node_id: &str,
        conn: &str,
        grace_ms: u64,
        reason: &str,
    ) -> Result<Output<OfflineReply>, StoreError> {
        let args = self.args().s(node_id).s(conn).s(grace_ms).s(reason);
        self.run(Script::NodeOffline, &self.node_keys(node_id), args)
            .await
    }

    /// `sweep.lua`: handle due deadlines (nodes, jobs, pause cuts, reorder windows).
    pub async fn sweep(&self) -> Result<Output<SweepReply>, StoreError> {
        let k = &self.keys;
        let keys = [
            k.nodes_live(),
            k.nodes_index(),
            k.pools_index(),
            k.due("jobs"),
            k.due("audio"),
            k.due("reorder"),
        ];
        self.run(Script::Sweep, &keys, self.args()).await
    }

    /// One node's record, if it exists.
    pub async fn node(&self, node_id: &str) -> Result<Option<HashMap<String, String>>, StoreError> {
        let mut conn = self.conn().await?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.node(node_id))
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        Ok(if h.is_empty() { None } else { Some(h) })
    }

    /// Records of known nodes (online and recently offline), at most `limit`: the latest
    /// to expire first, so live nodes (liveness + retention ahead) come before offline ones
    /// (retention only).
    pub async fn nodes(&self, limit: usize) -> Result<Vec<HashMap<String, String>>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.nodes_index())
            .arg(0)
            .arg(limit.saturating_sub(1) as i64)
            .arg("REV")
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        if ids.is_empty() {
            return Ok(Vec::new()); // an empty pipeline is an error to Redis
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.keys.node(id));
        }
        let all: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        Ok(all.into_iter().filter(|h| !h.is_empty()).collect())
    }

    /// Every non-empty pool with its members, sorted by name.
    pub async fn pools(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let mut conn = self.conn().await?;
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.pools_index())
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.cmd("SMEMBERS").arg(self.keys.pool(n));
        }
        let members: Vec<Vec<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        Ok(names
            .into_iter()
            .zip(members)
            .map(|(n, mut m)| {
                m.sort();
                (n, m)
            })
            .collect())
    }

    /// Count of known nodes by state (read at `/metrics` scrape time).
    pub async fn node_states(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.nodes_index())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET").arg(self.keys.node(id)).arg("state");
        }
        let states: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| StoreError::from_redis("read", e))?
        };
        let mut out: BTreeMap<String, i64> = ["ready", "draining", "disconnected", "offline"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for s in states.into_iter().flatten() {
            *out.entry(s).or_default() += 1;
        }
        Ok(out)
    }
}

impl Store {
    /// Jobs waiting in each pool's queue (read at `/metrics` scrape time).
    /// `(reserved, capacity)` summed over the `ready` members of each pool (for the
    /// saturation gauges at scrape time): one pipelined HMGET per distinct member.
    pub async fn pool_capacity(
        &self,
        pools: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let ids: std::collections::BTreeSet<&String> = pools.values().flatten().collect();
        let mut nodes: HashMap<&String, (i64, i64)> = HashMap::new();
        if !ids.is_empty() {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.keys.node(id))
                    .arg("state")
                    .arg("reserved")
                    .arg("capacity");
            }
            let rows: Vec<(Option<String>, Option<i64>, Option<i64>)> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| StoreError::from_redis("read", e))?;
            for (id, (state, reserved, capacity)) in ids.into_iter().zip(rows) {
                if state.as_deref() == Some("ready") {
                    nodes.insert(id, (reserved.unwrap_or(0), capacity.unwrap_or(0)));
                }
            }
        }
        Ok(pools
            .iter()
            .map(|(pool, members)| {
                let sum = members
                    .iter()
                    .filter_map(|m| nodes.get(m))
                    // (saturating: the fields are Redis's, an operator may edit them)
                    .fold((0i64, 0i64), |a, (r, c)| {
                        (a.0.saturating_add(*r), a.1.saturating_add(*c))
                    });
                (pool.clone(), sum)
            })
            .collect())
    }
}

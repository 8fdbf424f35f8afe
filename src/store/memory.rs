//! The memory of the Redis that holds a cell (`INFO memory`), and the one setting of it the
//! scheduler cannot run without.
//!
//! Every key the scripts write belongs to an invariant of DESIGN §1: a reservation is counted
//! in `node:<id>` and held in `node:<id>:jobs`, a result is in a session's log with its body, a
//! queued job is in its queues. A `maxmemory-policy` that evicts keys (`allkeys-*`,
//! `volatile-*`: nearly every key here has a TTL) would drop one half of such a pair
//! silently once Redis is full: oversold nodes, results lost after they were acknowledged.
//! So an instance is not ready ([`Store::check_ready`]) while its Redis evicts, unless
//! `redis.allow_eviction` says the operator accepts that. Under `noeviction` a full Redis
//! refuses a call before it runs (`-OOM`: a Redis Function that may write is checked before
//! it starts), so nothing changes and the client hears `SCHEDULER_DEPENDENCY_DOWN`
//! (`StoreError::from_redis`). `used` and `max` are exported as gauges so an
//! operator sees it coming. A Redis that refuses `INFO` to its user (`NOPERM`, an ACL
//! without `+info`) is not checked: the start logs it, readiness does not wait for it.

use super::{Conn, Store, StoreError};

/// What `INFO memory` says of the cell's Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// `used_memory`, bytes.
    pub used: u64,
    /// `maxmemory`, bytes (0: no limit).
    pub max: u64,
    /// `maxmemory_policy` (`noeviction`, `allkeys-lru`, ...).
    pub policy: String,
}

impl Memory {
    /// Parse the text of `INFO memory` (`field:value` lines); `None` if a field is missing.
    pub fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Some(Self {
            used: field("used_memory")?.parse().ok()?,
            max: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_string(),
        })
    }

    /// Whether Redis may evict keys: a policy other than `noeviction` with a limit set
    /// (without `maxmemory` Redis never evicts, whatever the policy).
    pub fn evicts(&self) -> bool {
        self.max > 0 && self.policy != "noeviction"
    }

    /// Why a Redis that evicts is refused (readiness), naming the fix.
    pub fn eviction_refused(&self) -> String {
        format!(
            "maxmemory-policy is {} with maxmemory {} bytes: a full Redis would evict keys the \
             scheduler's state depends on; set maxmemory-policy noeviction (or \
             redis.allow_eviction = true to accept the risk)",
            self.policy, self.max
        )
    }
}

/// What the cell's Redis memory settings mean for readiness (decided here only).
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    /// `noeviction`, or no `maxmemory`: Redis never evicts.
    Safe,
    /// Redis may evict and `redis.allow_eviction` is off: not ready, for this reason.
    Refused(String),
    /// Redis may evict under this policy, and `redis.allow_eviction` accepts it.
    Accepted(String),
    /// Redis refused `INFO` to this user (`NOPERM`): not checked.
    Unchecked,
}

impl Store {
    /// [`Eviction`] of the cell's Redis.
    pub async fn eviction(&self) -> Result<Eviction, StoreError> {
        let mut conn = self.conn().await?;
        self.eviction_on(&mut conn).await
    }

    /// [`Store::eviction`] on a connection the caller holds.
    pub(super) async fn eviction_on(&self, conn: &mut Conn) -> Result<Eviction, StoreError> {
        Ok(match self.memory_on(conn).await? {
            None => Eviction::Unchecked,
            Some(m) if !m.evicts() => Eviction::Safe,
            Some(m) if self.allow_eviction => Eviction::Accepted(m.policy),
            Some(m) => Eviction::Refused(m.eviction_refused()),
        })
    }

    /// `INFO memory` of the node holding the cell (in cluster mode, the primary of its slot);
    /// `None`: Redis refused it to this user (`NOPERM`, an ACL without `+info`).
    pub async fn memory(&self) -> Result<Option<Memory>, StoreError> {
        let mut conn = self.conn().await?;
        self.memory_on(&mut conn).await
    }

    /// [`Store::memory`] on a connection the caller holds.
    async fn memory_on(&self, conn: &mut Conn) -> Result<Option<Memory>, StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("memory");
        let v = match self
            .connector
            .on_cell(conn, &cmd, &self.keys.instances())
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOPERM") => return Ok(None),
            Err(e) => return Err(StoreError::from_redis("info memory", e)),
        };
        let text: String = redis::from_redis_value(v).map_err(|e| StoreError::Reply {
            script: "info memory",
            message: e.to_string(),
        })?;
        Memory::parse(&text)
            .map(Some)
            .ok_or_else(|| StoreError::Reply {
                script: "info memory",
                message: "no used_memory, maxmemory or maxmemory_policy".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    const INFO: &str = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
        used_memory_rss:2000000\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\n\
        maxmemory_policy:noeviction\r\n";

    #[test]
    fn info_memory_is_read_field_by_exact_name() {
        let m = Memory::parse(INFO).expect("parsed");
        assert_eq!(
            m,
            Memory {
                used: 1_048_576,
                max: 0,
                policy: "noeviction".into()
            }
        );
        assert!(!m.evicts());
        assert_eq!(Memory::parse("used_memory:1\r\n"), None);
    }

    #[test]
    fn only_a_limit_with_an_evicting_policy_evicts() {
        let with = |max, policy: &str| Memory {
            used: 1,
            max,
            policy: policy.into(),
        };
        assert!(with(1 << 20, "allkeys-lru").evicts());
        assert!(with(1 << 20, "volatile-ttl").evicts());
        assert!(!with(1 << 20, "noeviction").evicts());
        assert!(!with(0, "allkeys-lru").evicts(), "no limit: never evicts");
        let why = with(1 << 20, "allkeys-lru").eviction_refused();
        assert!(
            why.contains("allkeys-lru") && why.contains("noeviction"),
            "{why}"
        );
    }
}

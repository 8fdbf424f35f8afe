//! One cell of Redis read in a single script call: every key of the cell with its type, TTL
//! and content, so that the checker's rules run over one state between two script calls of
//! the running instances, never over parts of two.

use std::collections::{BTreeMap, BTreeSet};

use redis::aio::MultiplexedConnection;

/// Every key matching ARGV[1] (`<prefix>*`) as `{name, type, pttl, content}`: a hash as its
/// HGETALL, a set its members, a sorted set members and scores, a list its items, a string
/// its length (audio can be tens of KB); streams only exist. Read-only (`no-writes`). KEYS[1] is a
/// key of the cell's slot, so a Redis Cluster node serves the call only when it holds the
/// cell, and the script may read the slot's other keys undeclared.
const READ_CELL: &str = r#"#!lua flags=no-writes
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local t = redis.call('TYPE', k)['ok']
  local v = {}
  if t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'set' then v = redis.call('SMEMBERS', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'string' then v = {tostring(redis.call('STRLEN', k))}
  end
  if t ~= 'none' then out[#out + 1] = {k, t, redis.call('PTTL', k), v} end
end
return out
"#;

/// A key's content, by type (a string: its length; streams: [`Value::Other`]).
pub enum Value {
    Hash(BTreeMap<String, String>),
    Set(BTreeSet<String>),
    ZSet(BTreeMap<String, f64>),
    List(Vec<String>),
    String(u64),
    Other,
}

pub struct Entry {
    /// PTTL: milliseconds left, or -1 without TTL.
    pub ttl: i64,
    pub value: Value,
}

/// Every key of one cell at one instant.
pub struct Snapshot {
    pub keys: BTreeMap<String, Entry>,
}

static NO_HASH: BTreeMap<String, String> = BTreeMap::new();
static NO_SET: BTreeSet<String> = BTreeSet::new();
static NO_ZSET: BTreeMap<String, f64> = BTreeMap::new();

impl Snapshot {
    /// The cell whose keys start with `prefix` (`{prefix:cell}:`), in one EVAL.
    pub async fn read(c: &mut MultiplexedConnection, prefix: &str) -> Snapshot {
        let mut pattern = String::new();
        for ch in prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(ch);
        }
        pattern.push('*');
        let rows: Vec<(String, String, i64, Vec<String>)> = redis::cmd("EVAL")
            .arg(READ_CELL)
            .arg(1)
            .arg(format!("{prefix}slot-guard"))
            .arg(pattern)
            .query_async(c)
            .await
            .unwrap_or_else(|e| panic!("read cell {prefix}: {e}"));
        let keys = rows
            .into_iter()
            .map(|(key, kind, ttl, content)| {
                let value = match kind.as_str() {
                    "hash" => Value::Hash(pairs(content).collect()),
                    "set" => Value::Set(content.into_iter().collect()),
                    "zset" => Value::ZSet(
                        pairs(content)
                            .map(|(m, s)| {
                                let s = s.parse().unwrap_or_else(|_| panic!("{key}: score {s}"));
                                (m, s)
                            })
                            .collect(),
                    ),
                    "list" => Value::List(content),
                    "string" => {
                        Value::String(content.first().and_then(|n| n.parse().ok()).unwrap_or(0))
                    }
                    _ => Value::Other,
                };
                (key, Entry { ttl, value })
            })
            .collect();
        Snapshot { keys }
    }

    /// The key names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }

    pub fn exists(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The fields of hash `key` (none when it is missing or no hash).
    pub fn hash(&self, key: &str) -> &BTreeMap<String, String> {
        match self.keys.get(key).map(|e| &e.value) {
            Some(Value::Hash(h)) => h,
            _ => &NO_HASH,
        }
    }

    /// The members of set `key` (none when it is missing or no set).
    pub fn set(&self, key: &str) -> &BTreeSet<String> {
        match self.keys.get(key).map(|e| &e.value) {
            Some(Value::Set(s)) => s,
            _ => &NO_SET,
        }
    }

    /// The members and scores of sorted set `key` (none when it is missing or no zset).
    pub fn zset(&self, key: &str) -> &BTreeMap<String, f64> {
        match self.keys.get(key).map(|e| &e.value) {
            Some(Value::ZSet(z)) => z,
            _ => &NO_ZSET,
        }
    }

    pub fn zscore(&self, key: &str, member: &str) -> Option<f64> {
        self.zset(key).get(member).copied()
    }

    /// The length of string `key` (None when it is missing or no string).
    pub fn strlen(&self, key: &str) -> Option<u64> {
        match self.keys.get(key).map(|e| &e.value) {
            Some(Value::String(n)) => Some(*n),
            _ => None,
        }
    }

    /// The items of list `key` (none when it is missing or no list).
    pub fn list(&self, key: &str) -> &[String] {
        match self.keys.get(key).map(|e| &e.value) {
            Some(Value::List(l)) => l,
            _ => &[],
        }
    }
}

/// `[a, b, c, d]` as `(a, b), (c, d)`.
fn pairs(flat: Vec<String>) -> impl Iterator<Item = (String, String)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
}

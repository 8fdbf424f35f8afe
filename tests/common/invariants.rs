//! The invariant checker of DESIGN §1, reading Redis directly after a scenario.
//!
//! - pool membership is consistent both ways, and only nodes that can take work are in pools;
//! - the pools index lists exactly the non-empty pools;
//! - the liveness set holds only nodes that are not offline;
//! - a node's reservations never exceed its capacity and equal the size of its active-job
//!   set; every active job is in exactly one node's set, with a deadline;
//! - every job is in exactly one state, and where that state says it is (queue, node, due);
//! - a job's routing explanation agrees with it (route of the current attempt names its
//!   node; every earlier attempt has an end; with `jobs.max_attempts` known, a job that
//!   failed after a failover with attempts left explains that last dispatch:
//!   `unexplained_failures`, checked by the property test);
//! - every key has a TTL or is one of the owned kinds (pools, indexes) whose members are
//!   removed by scripts — nothing grows without bound.

use std::collections::{BTreeSet, HashMap};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

pub const PREFIX: &str = "{switchyard:main}:";

/// Keys without TTL that are allowed: their members are owned by node records.
fn owned_key(key: &str) -> bool {
    let rest = key.split_once("}:").map_or(key, |(_, r)| r);
    rest == "pools"
        || rest == "nodes:live"
        || rest == "nodes:index"
        || rest.starts_with("pool:")
        || rest.starts_with("queue:")
        || rest.starts_with("due:")
        || rest == "instances"
        || rest == "deadletter"
        || rest.starts_with("inbox:")
}

async fn all_keys(c: &mut MultiplexedConnection) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .expect("scan");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Assert every invariant; panics with a list of all violations.
pub async fn check(c: &mut MultiplexedConnection) {
    let bad = violations(c).await;
    assert!(
        bad.is_empty(),
        "invariants violated:\n  {}",
        bad.join("\n  ")
    );
}

/// Every invariant violation found in Redis now (empty when all hold).
pub async fn violations(c: &mut MultiplexedConnection) -> Vec<String> {
    let keys = all_keys(c).await;
    let mut bad = Vec::new();
    for prefix in cell_prefixes(&keys) {
        let mine: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        bad.extend(
            violations_in(c, &prefix, mine)
                .await
                .into_iter()
                .map(|v| format!("[{prefix}] {v}")),
        );
    }
    for k in keys.iter().filter(|k| !k.starts_with('{')) {
        bad.push(format!("key {k} carries no cell hash tag"));
    }
    bad
}

/// The distinct cell prefixes (`{prefix:cell}:`) of `keys`.
pub fn cell_prefixes(keys: &[String]) -> BTreeSet<String> {
    keys.iter()
        .filter_map(|k| k.find("}:").map(|i| k[..i + 2].to_string()))
        .filter(|p| p.starts_with('{'))
        .collect()
}

/// Every violation in the cell whose keys start with `prefix` (`keys`: its keys).
async fn violations_in(
    c: &mut MultiplexedConnection,
    prefix: &str,
    keys: Vec<String>,
) -> Vec<String> {
    let mut bad: Vec<String> = Vec::new();

    for k in &keys {
        let ttl: i64 = c.pttl(k).await.expect("pttl");
        if ttl == -1 && !owned_key(k) {
            bad.push(format!("key {k} has no TTL and no owner"));
        }
    }

    let index: BTreeSet<String> = c
        .smembers(format!("{prefix}pools"))
        .await
        .expect("smembers");
    let pool_keys: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&format!("{prefix}pool:"))
                .map(str::to_string)
        })
        .collect();
    if index != pool_keys {
        bad.push(format!(
            "pools index {index:?} != non-empty pools {pool_keys:?}"
        ));
    }

    for pool in &pool_keys {
        let members: Vec<String> = c
            .smembers(format!("{prefix}pool:{pool}"))
            .await
            .expect("smembers");
        for n in members {
            let h: HashMap<String, String> = c
                .hgetall(format!("{prefix}node:{n}"))
                .await
                .expect("hgetall");
            match h.get("state").map(String::as_str) {
                Some("ready") | Some("draining") => {}
                other => bad.push(format!("pool {pool} holds {n} in state {other:?}")),
            }
            let back: bool = c
                .sismember(format!("{prefix}node:{n}:pools"), pool)
                .await
                .expect("sismember");
            if !back {
                bad.push(format!(
                    "pool {pool} holds {n} but its pools set does not list it"
                ));
            }
        }
    }

    let node_ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}node:")))
        .filter(|rest| !rest.contains(':'))
        .map(str::to_string)
        .collect();
    for n in &node_ids {
        // One snapshot of the node (MULTI/EXEC): the instances keep sweeping while this
        // runs, and a sweep that takes a disconnected node offline between two reads would
        // read as a node in neither state.
        let (h, mine, active, live): (
            HashMap<String, String>,
            Vec<String>,
            Vec<String>,
            Option<f64>,
        ) = redis::pipe()
            .atomic()
            .hgetall(format!("{prefix}node:{n}"))
            .smembers(format!("{prefix}node:{n}:pools"))
            .smembers(format!("{prefix}node:{n}:jobs"))
            .zscore(format!("{prefix}nodes:live"), n)
            .query_async(c)
            .await
            .expect("node snapshot");
        for p in &mine {
            let there: bool = c
                .sismember(format!("{prefix}pool:{p}"), n)
                .await
                .expect("sismember");
            if !there {
                bad.push(format!("node {n} lists pool {p} but is not in it"));
            }
        }
        let cap: i64 = h.get("capacity").and_then(|v| v.parse().ok()).unwrap_or(0);
        let reserved: i64 = h.get("reserved").and_then(|v| v.parse().ok()).unwrap_or(0);
        if reserved < 0 || reserved > cap {
            bad.push(format!("node {n} reserved {reserved} of capacity {cap}"));
        }
        if active.len() as i64 != reserved {
            bad.push(format!(
                "node {n} reserved {reserved} but holds {} active jobs",
                active.len()
            ));
        }
        for j in &active {
            let job: HashMap<String, String> = c
                .hgetall(format!("{prefix}job:{j}"))
                .await
                .expect("hgetall");
            let state = job.get("state").map(String::as_str).unwrap_or("missing");
            if !ACTIVE.contains(&state) || job.get("node") != Some(n) {
                bad.push(format!(
                    "node {n} holds job {j} in state {state} on {:?}",
                    job.get("node")
                ));
            }
        }
        let state = h.get("state").cloned().unwrap_or_default();
        if state == "offline" && live.is_some() {
            bad.push(format!("offline node {n} is still in the liveness set"));
        }
        if state != "offline" && live.is_none() {
            bad.push(format!(
                "node {n} in state {state} has no liveness deadline"
            ));
        }
    }
    let jobs: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}job:")))
        .filter(|rest| !rest.contains(':'))
        .map(str::to_string)
        .collect();
    for j in &jobs {
        check_job(c, prefix, j, &mut bad).await;
    }

    // A result logged in two parts ("+" and its header) has its body (results.lua logged()).
    for rk in keys
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}session:")) && k.ends_with(":results"))
    {
        let log: HashMap<String, String> = c.hgetall(rk).await.expect("hgetall");
        let sk = rk.trim_end_matches(":results");
        for (idx, m) in log.iter().filter(|(_, m)| m.starts_with('+')) {
            if !keys.contains(&format!("{sk}:body:{idx}")) {
                bad.push(format!("{rk} index {idx} is logged without its body: {m}"));
            }
        }
    }

    let live: Vec<String> = c
        .zrange(format!("{prefix}nodes:live"), 0, -1)
        .await
        .expect("zrange");
    for n in live {
        if !node_ids.contains(&n) {
            bad.push(format!("liveness set holds {n} without a record"));
        }
    }
    bad
}

const ACTIVE: [&str; 3] = ["DISPATCHED", "ACCEPTED", "RUNNING"];
const TERMINAL: [&str; 3] = ["FINISHED", "FAILED", "CANCELLED"];

/// One job: exactly one known state, and present exactly where that state says.
async fn check_job(c: &mut MultiplexedConnection, prefix: &str, j: &str, bad: &mut Vec<String>) {
    let job: HashMap<String, String> = c
        .hgetall(format!("{prefix}job:{j}"))
        .await
        .expect("hgetall");
    let state = job.get("state").cloned().unwrap_or_default();
    let due: Option<f64> = c
        .zscore(format!("{prefix}due:jobs"), j)
        .await
        .expect("zscore");
    let node = job.get("node").cloned().unwrap_or_default();
    if ACTIVE.contains(&state.as_str()) {
        let held: bool = c
            .sismember(format!("{prefix}node:{node}:jobs"), j)
            .await
            .expect("sismember");
        if !held {
            bad.push(format!(
                "job {j} is {state} on {node:?}, which does not hold it"
            ));
        }
        if due.is_none() {
            bad.push(format!("job {j} is {state} without a deadline"));
        }
    } else if state == "QUEUED" {
        // A queued job waits in the queue of every candidate pool, exactly once in each.
        let queues = job.get("queue").cloned().unwrap_or_default();
        if queues.is_empty() {
            bad.push(format!("queued job {j} names no queue"));
        }
        for q in queues.split(',').filter(|q| !q.is_empty()) {
            let items: Vec<String> = c
                .lrange(format!("{prefix}queue:{q}"), 0, -1)
                .await
                .expect("lrange");
            let n = items.iter().filter(|x| x.as_str() == j).count();
            if n != 1 {
                bad.push(format!("queued job {j} appears {n} times in queue {q}"));
            }
        }
        if due.is_none() {
            bad.push(format!("queued job {j} has no deadline"));
        }
    } else if TERMINAL.contains(&state.as_str()) {
        if due.is_some() {
            bad.push(format!("{state} job {j} still has a deadline"));
        }
        // Settled = its terminal message is in the session's result log, while the session's
        // idempotency entry still names this job (both leave the log together).
        let (sid, idx) = (job.get("session"), job.get("idx"));
        if let (Some(sid), Some(idx)) = (sid, idx) {
            let sk = format!("{prefix}session:{sid}");
            let owner: Option<String> = c.hget(format!("{sk}:jobs"), idx).await.expect("hget");
            let logged: bool = c
                .hexists(format!("{sk}:results"), idx)
                .await
                .expect("hexists");
            if owner.as_deref() == Some(j) && !logged {
                bad.push(format!(
                    "{state} job {j} (index {idx}) has no terminal message in {sid}'s log"
                ));
            }
        }
    } else {
        bad.push(format!("job {j} in unknown state {state:?}"));
    }
    // The routing explanation agrees with the record (jobs.explain, on in every test): the
    // current attempt's route names the node holding it, and every earlier attempt ended.
    let attempt: u32 = job.get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
    if attempt > 0 {
        match job.get(&format!("route:{attempt}")) {
            Some(r) if ACTIVE.contains(&state.as_str()) => {
                if r.split(' ').nth(1) != Some(node.as_str()) {
                    bad.push(format!(
                        "job {j} is on {node:?} but route:{attempt} says {r:?}"
                    ));
                }
            }
            Some(_) => {}
            None => bad.push(format!("job {j} has no route:{attempt}")),
        }
        for k in 1..attempt {
            if !job.contains_key(&format!("end:{k}")) {
                bad.push(format!("job {j}: attempt {k} of {attempt} has no end:{k}"));
            }
        }
        // A failed job's last attempt ended too: `fail` or the failover before it says how.
        if state == "FAILED" && !job.contains_key(&format!("end:{attempt}")) {
            bad.push(format!("job {j} FAILED without end:{attempt}"));
        }
    }
    if !ACTIVE.contains(&state.as_str()) {
        // no node may hold it
        let tried = job.get("tried").cloned().unwrap_or_default();
        for n in tried
            .split(',')
            .filter(|s| !s.is_empty())
            .chain(std::iter::once(node.as_str()))
        {
            if n.is_empty() {
                continue;
            }
            let held: bool = c
                .sismember(format!("{prefix}node:{n}:jobs"), j)
                .await
                .expect("sismember");
            if held {
                bad.push(format!("{state} job {j} is still reserved on {n}"));
            }
        }
    }
}

/// A job that failed over with attempts left and then failed without another attempt (no
/// other node could ever serve it: `…|none>`; a candidate queue was full:
/// `…|queue_full><queue>`; or its wait in the queues ran out: `…|queued@…`) keeps the
/// explanation of that last dispatch, `route:<attempt + 1>`. Needs `jobs.max_attempts`,
/// which Redis does not hold (a job that used its attempts up fails with no further
/// route), so `check` cannot tell; the property test's cell (cell.rs) checks it.
pub async fn unexplained_failures(c: &mut MultiplexedConnection, max_attempts: u32) -> Vec<String> {
    let mut bad = Vec::new();
    for key in all_keys(c).await {
        let Some(j) = key
            .split_once("}:")
            .and_then(|(_, rest)| rest.strip_prefix("job:"))
            .filter(|j| !j.contains(':'))
        else {
            continue;
        };
        let job: HashMap<String, String> = c.hgetall(&key).await.expect("hgetall");
        if job.get("state").map(String::as_str) != Some("FAILED") {
            continue;
        }
        let attempt: u32 = job.get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
        let failed_over = job
            .get(&format!("end:{attempt}"))
            .is_some_and(|e| e.split(' ').nth(1) == Some("failover"));
        let next = format!("route:{}", attempt + 1);
        if failed_over && attempt < max_attempts && !job.contains_key(&next) {
            bad.push(format!(
                "job {j} failed over at attempt {attempt} of {max_attempts}, then failed without {next}"
            ));
        }
    }
    bad
}

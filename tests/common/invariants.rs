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
//! - a fleet credential's count (`fleet:<fp>:nodes`) holds exactly its nodes that are not
//!   offline;
//! - every key has a TTL or is one of the owned kinds (pools, indexes) whose members are
//!   removed by scripts — nothing grows without bound.
//!
//! The scenario's instances keep running while the checker reads (their sweeps take silent
//! nodes offline, time jobs out...), and every rule spans several keys: read with one
//! command each, they could straddle a script call and report a violation of a state that
//! never was (a node the sweep took offline between two reads). So each cell is read in one
//! atomic, read-only script call ([`snapshot`]), and every rule is checked in memory over
//! that snapshot. SCAN only finds the cells and the keys outside any cell.

mod snapshot;

use std::collections::BTreeSet;

use redis::aio::MultiplexedConnection;
use snapshot::Snapshot;

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
        || (rest.starts_with("fleet:") && rest.ends_with(":nodes"))
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
        let cell = Snapshot::read(c, &prefix).await;
        bad.extend(
            violations_in(&cell, &prefix)
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

/// The ids `x` of the keys `<prefix><kind>x` of `s` (`x` without `:`).
fn ids<'a>(s: &'a Snapshot, prefix: &str, kind: &str) -> Vec<&'a str> {
    let start = format!("{prefix}{kind}");
    s.names()
        .filter_map(|k| k.strip_prefix(&start))
        .filter(|rest| !rest.contains(':'))
        .collect()
}

/// Every violation in the cell `s` whose keys start with `prefix`.
fn violations_in(s: &Snapshot, prefix: &str) -> Vec<String> {
    let mut bad: Vec<String> = Vec::new();

    for (k, e) in &s.keys {
        if e.ttl == -1 && !owned_key(k) {
            bad.push(format!("key {k} has no TTL and no owner"));
        }
    }

    let index = s.set(&format!("{prefix}pools"));
    let pool_keys: BTreeSet<String> = s
        .names()
        .filter_map(|k| {
            k.strip_prefix(&format!("{prefix}pool:"))
                .map(str::to_string)
        })
        .collect();
    if *index != pool_keys {
        bad.push(format!(
            "pools index {index:?} != non-empty pools {pool_keys:?}"
        ));
    }

    for pool in &pool_keys {
        for n in s.set(&format!("{prefix}pool:{pool}")) {
            let h = s.hash(&format!("{prefix}node:{n}"));
            match h.get("state").map(String::as_str) {
                Some("ready") | Some("draining") => {}
                other => bad.push(format!("pool {pool} holds {n} in state {other:?}")),
            }
            if !s.set(&format!("{prefix}node:{n}:pools")).contains(pool) {
                bad.push(format!(
                    "pool {pool} holds {n} but its pools set does not list it"
                ));
            }
        }
    }

    let node_ids = ids(s, prefix, "node:");
    for &n in &node_ids {
        let h = s.hash(&format!("{prefix}node:{n}"));
        for p in s.set(&format!("{prefix}node:{n}:pools")) {
            if !s.set(&format!("{prefix}pool:{p}")).contains(n) {
                bad.push(format!("node {n} lists pool {p} but is not in it"));
            }
        }
        let cap: i64 = h.get("capacity").and_then(|v| v.parse().ok()).unwrap_or(0);
        let reserved: i64 = h.get("reserved").and_then(|v| v.parse().ok()).unwrap_or(0);
        if reserved < 0 || reserved > cap {
            bad.push(format!("node {n} reserved {reserved} of capacity {cap}"));
        }
        let active = s.set(&format!("{prefix}node:{n}:jobs"));
        if active.len() as i64 != reserved {
            bad.push(format!(
                "node {n} reserved {reserved} but holds {} active jobs",
                active.len()
            ));
        }
        for j in active {
            let job = s.hash(&format!("{prefix}job:{j}"));
            let state = job.get("state").map(String::as_str).unwrap_or("missing");
            if !ACTIVE.contains(&state) || job.get("node").map(String::as_str) != Some(n) {
                bad.push(format!(
                    "node {n} holds job {j} in state {state} on {:?}",
                    job.get("node")
                ));
            }
        }
        let state = h.get("state").cloned().unwrap_or_default();
        let live = s.zscore(&format!("{prefix}nodes:live"), n);
        if state == "offline" && live.is_some() {
            bad.push(format!("offline node {n} is still in the liveness set"));
        }
        if state != "offline" && live.is_none() {
            bad.push(format!(
                "node {n} in state {state} has no liveness deadline"
            ));
        }
        let fleet = h.get("fleet").map(String::as_str).unwrap_or("");
        if state != "offline"
            && !fleet.is_empty()
            && !s.set(&format!("{prefix}fleet:{fleet}:nodes")).contains(n)
        {
            bad.push(format!(
                "node {n} in state {state} is not counted by its fleet credential {fleet}"
            ));
        }
    }
    // A fleet credential counts exactly its nodes that are not offline (register.lua).
    for fk in s
        .names()
        .filter(|k| k.starts_with(&format!("{prefix}fleet:")) && k.ends_with(":nodes"))
    {
        let fp = &fk[prefix.len() + "fleet:".len()..fk.len() - ":nodes".len()];
        for n in s.set(fk) {
            let h = s.hash(&format!("{prefix}node:{n}"));
            let state = h.get("state").map(String::as_str);
            if matches!(state, None | Some("offline"))
                || h.get("fleet").map(String::as_str) != Some(fp)
            {
                bad.push(format!(
                    "fleet credential {fp} counts node {n} in state {state:?} of credential {:?}",
                    h.get("fleet")
                ));
            }
        }
    }
    for j in ids(s, prefix, "job:") {
        check_job(s, prefix, j, &mut bad);
    }

    for sid in ids(s, prefix, "session:") {
        check_audio_buffer(s, prefix, sid, &mut bad);
        check_delivery_log(s, prefix, sid, &mut bad);
    }

    // A result logged in two parts ("+" and its header) has its body (results.lua logged()).
    for rk in s
        .names()
        .filter(|k| k.starts_with(&format!("{prefix}session:")) && k.ends_with(":results"))
    {
        let sk = rk.trim_end_matches(":results");
        for (idx, m) in s.hash(rk).iter().filter(|(_, m)| m.starts_with('+')) {
            if !s.exists(&format!("{sk}:body:{idx}")) {
                bad.push(format!("{rk} index {idx} is logged without its body: {m}"));
            }
        }
    }

    for n in s.zset(&format!("{prefix}nodes:live")).keys() {
        if !node_ids.contains(&n.as_str()) {
            bad.push(format!("liveness set holds {n} without a record"));
        }
    }
    bad
}

/// A session's audio buffer (audio_append.lua, cut.lua): the record's `buf_bytes` is the
/// buffer's length, and buffered audio has a pause clock in `due:audio`, so a sweep cuts it
/// even if no chunk comes (audio without one is never cut: lost). A held cut (`held_cut`)
/// holds audio.
fn check_audio_buffer(s: &Snapshot, prefix: &str, sid: &str, bad: &mut Vec<String>) {
    let sk = format!("{prefix}session:{sid}");
    let h = s.hash(&sk);
    if h.is_empty() {
        return;
    }
    let counted: u64 = h.get("buf_bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
    match s.strlen(&format!("{sk}:audio")) {
        Some(len) => {
            if len != counted {
                bad.push(format!(
                    "session {sid} buffers {len} bytes of audio, buf_bytes says {counted}"
                ));
            }
            if s.zscore(&format!("{prefix}due:audio"), sid).is_none() {
                bad.push(format!(
                    "session {sid} buffers {len} bytes of audio without a pause clock in due:audio"
                ));
            }
        }
        None if counted > 0 => bad.push(format!(
            "session {sid}: buf_bytes says {counted} with no audio buffered"
        )),
        None => {
            if let Some(held) = h.get("held_cut") {
                bad.push(format!("session {sid} holds a {held} cut with no audio"));
            }
        }
    }
}

/// A session's result log (results.lua): no call ends with a result logged at the delivery
/// cursor (each advances past every one; submit relies on it and looks no further), every
/// held index (`:pending`) has its result and lies past the cursor, and held results have
/// a reorder clock in `due:reorder` (or no sweep would ever release them).
fn check_delivery_log(s: &Snapshot, prefix: &str, sid: &str, bad: &mut Vec<String>) {
    let sk = format!("{prefix}session:{sid}");
    let Some(cursor) = s
        .hash(&sk)
        .get("next_deliver")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let results = s.hash(&format!("{sk}:results"));
    if results.contains_key(&cursor.to_string()) {
        bad.push(format!(
            "session {sid} has a result logged at its cursor {cursor}"
        ));
    }
    let pending = s.zset(&format!("{sk}:pending"));
    for idx in pending.keys() {
        if !results.contains_key(idx) {
            bad.push(format!(
                "session {sid} holds index {idx} without its result"
            ));
        }
        if idx.parse::<u64>().is_ok_and(|i| i < cursor) {
            bad.push(format!(
                "session {sid} holds index {idx}, below its cursor {cursor}"
            ));
        }
    }
    if !pending.is_empty() && s.zscore(&format!("{prefix}due:reorder"), sid).is_none() {
        bad.push(format!(
            "session {sid} holds {} results without a reorder clock",
            pending.len()
        ));
    }
}

const ACTIVE: [&str; 3] = ["DISPATCHED", "ACCEPTED", "RUNNING"];
const TERMINAL: [&str; 3] = ["FINISHED", "FAILED", "CANCELLED"];

/// One job: exactly one known state, and present exactly where that state says.
fn check_job(s: &Snapshot, prefix: &str, j: &str, bad: &mut Vec<String>) {
    let job = s.hash(&format!("{prefix}job:{j}"));
    let state = job.get("state").cloned().unwrap_or_default();
    let due = s.zscore(&format!("{prefix}due:jobs"), j);
    let node = job.get("node").cloned().unwrap_or_default();
    let holds = |n: &str| s.set(&format!("{prefix}node:{n}:jobs")).contains(j);
    if ACTIVE.contains(&state.as_str()) {
        if !holds(&node) {
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
            let items = s.list(&format!("{prefix}queue:{q}"));
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
            let owner = s.hash(&format!("{sk}:jobs")).get(idx);
            let logged = s.hash(&format!("{sk}:results")).contains_key(idx);
            if owner.map(String::as_str) == Some(j) && !logged {
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
            if holds(n) {
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
    for prefix in cell_prefixes(&all_keys(c).await) {
        let cell = Snapshot::read(c, &prefix).await;
        for j in ids(&cell, &prefix, "job:") {
            let job = cell.hash(&format!("{prefix}job:{j}"));
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
    }
    bad
}

//! Switchyard on the Redis topologies operators run: a primary + replica managed by three
//! sentinels, and a 3-primary 3-replica Redis Cluster (real redis-server / redis-sentinel
//! processes on loopback ports). Nodes register, jobs flow, the invariant checker passes;
//! under load the primary is killed with SIGKILL and the test measures how long the
//! instance takes to recover after the promotion, checks that `/readyz` told the truth
//! meanwhile, and counts acknowledged writes the promotion lost (with and without `WAIT`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::actors::*;
use common::invariants::{self, PREFIX};
use common::load::{Load, ready_after, watch_readyz};
use common::topology::{Cluster, MASTER, SentinelSet, connect, until};
use common::*;
use switchyard::config::{Config, RedisMode};
use switchyard::server::Running;

const T: Duration = Duration::from_secs(10);

fn cfg(mode: RedisMode, urls: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config("redis://unused");
    c.redis.mode = mode;
    c.redis.urls = urls;
    c.redis.sentinel_master = MASTER.into();
    // Node liveness longer than a failover (≈ 2–4 s here): nodes stay registered across
    // it, as docs/scaling.md advises.
    c.node.liveness_ms = Some(8_000);
    // Presence, too: instances whose presence expired during the failover take nobody over
    // when Redis returns (instance_beat), but a longer TTL keeps the scenario from
    // depending on that.
    c.instance.presence_ttl_ms = 6_000;
    tweak(&mut c);
    c
}

/// A node answering every job after 5 ms, registered on `inst`.
async fn auto_node(inst: &Running) -> AutoNode {
    AutoNode::start(
        &ws_url(inst, "/ws/node"),
        fixture("node_register_first"),
        Duration::from_millis(5),
    )
    .await
}

/// Open a session on `b`, send `n` utterances, expect `n` results (node may be elsewhere).
async fn jobs_flow(b: &Running, n: u64) {
    let (mut s, sid) =
        open_session(&ws_url(b, "/ws/session"), fixture("session_init_one_way")).await;
    for i in 0..n {
        s.send(&utterance(&sid, i)).await;
    }
    let got = terminals(&mut s, n as usize, T).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
}

/// Kill the sentinel-managed primary under load, `replicas` replicas, `WAIT wait_replicas`;
/// returns (acknowledged but lost, acknowledged).
async fn sentinel_failover(replicas: usize, wait_replicas: u32) -> (usize, usize) {
    // A backlog that covers the filler below, and no delay before a full resync: the
    // replica that is not promoted rejoins the new primary quickly (WAIT needs it).
    let extra = [
        "--repl-backlog-size",
        "64mb",
        "--repl-diskless-sync-delay",
        "0",
    ];
    let mut set = SentinelSet::start(replicas, &extra).await;
    let inst = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |c| {
        c.redis.wait_replicas = wait_replicas;
        c.redis.wait_timeout_ms = 3_000;
    }))
    .await;
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 3).await;

    let (ready, watcher) = watch_readyz(&inst);
    let load = Load::start(&inst, 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The first replica stops (SIGSTOP), and 16 MB written on the primary fill the socket
    // buffers towards it: what the primary acknowledges from then on sits in its own output
    // buffer for that replica (asynchronous replication's window). The primary dies in it.
    set.replicas[0].signal("STOP");
    // Its own connection without a response timeout: 16 MB take a while on a loaded machine.
    let mut p = redis::Client::open(set.primary.url())
        .expect("primary url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .expect("connect to the primary");
    let _: () = redis::cmd("SET")
        .arg("filler")
        .arg(vec![b'x'; 16 << 20])
        .arg("PX")
        .arg(60_000)
        .query_async(&mut p)
        .await
        .expect("filler");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let old = set.primary.addr();
    set.primary.kill9();
    let killed = Instant::now();
    set.replicas[0].signal("CONT");
    // `no_primary`: when the last round that found no replica answering `ROLE` as a
    // primary began; there was no primary from the kill until then. (Not the sentinels'
    // answers: the instance asks them all at once and may hear of the promotion from the
    // sentinel that made it, before the one this test asks.)
    let mut no_primary = killed;
    let mut promoted_role = false;
    let (promoted, new_primary) = loop {
        let asked = Instant::now();
        if !promoted_role {
            match any_replica_is_primary(&set).await {
                Some(true) => promoted_role = true,
                Some(false) => no_primary = asked,
                None => {}
            }
        }
        if let Some(a) = set.primary_addr().await.filter(|a| *a != old) {
            break (Instant::now(), a);
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "no promotion");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Recovered = the first acknowledged write after the promotion.
    let first_ack = |acked: &Arc<Mutex<Vec<(Instant, String)>>>| {
        acked
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .find(|t| *t > killed)
    };
    until(
        Duration::from_secs(5),
        "a write after the promotion",
        || {
            let a = first_ack(&load.acked);
            async move { a.is_some() }
        },
    )
    .await;
    let recovered = first_ack(&load.acked).expect("recovered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, failed) = load.stop();
    let ready_again = ready_after(&ready, promoted).await;
    watcher.abort();

    // What the new primary holds of what was acknowledged.
    let mut c = connect(&format!("redis://{new_primary}"))
        .await
        .expect("new primary");
    let mut lost = 0;
    for (_, sid) in &acked {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}session:{sid}"))
            .query_async(&mut c)
            .await
            .expect("exists");
        lost += usize::from(!exists);
    }
    let ready = ready.lock().unwrap().clone();
    // A ready answer asked for after the kill (and its in-flight checks) and received
    // while there was still no primary.
    let lied: Vec<_> = ready
        .iter()
        .filter(|(at, ok, got)| {
            *ok && *at > killed + Duration::from_millis(300) && *got < no_primary
        })
        .collect();
    eprintln!(
        "sentinel failover (wait_replicas={wait_replicas}, {replicas} replicas, \
         {new_primary} promoted): promotion {:?} after the kill; \
         first write {:?} after the promotion; /readyz ready again {:?} after it; \
         {} sessions acknowledged, {lost} of them lost; {failed} opens refused meanwhile",
        promoted.duration_since(killed),
        recovered.saturating_duration_since(promoted),
        ready_again,
        acked.len()
    );
    assert!(
        lied.is_empty(),
        "/readyz said ready with no primary: {lied:?}"
    );
    assert!(
        recovered.saturating_duration_since(promoted) < Duration::from_secs(5),
        "recovered within 5 s of the promotion"
    );
    assert!(ready_again.is_some_and(|d| d < Duration::from_secs(5)));
    assert_eq!(
        inst.app.cells.default_cell().store.redis_node(),
        new_primary,
        "follows the promoted replica"
    );
    // Still a working scheduler on the new primary, and its state is consistent (the
    // test's own filler, if the promoted replica had it, is not scheduler state).
    jobs_flow(&inst, 2).await;
    let _: () = redis::cmd("DEL")
        .arg("filler")
        .query_async(&mut c)
        .await
        .expect("del filler");
    invariants::check(&mut c).await;
    node.stop();
    (lost, acked.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_without_wait_is_followed_and_loss_counted() {
    let (lost, acked) = sentinel_failover(1, 0).await;
    assert!(acked > 0);
    eprintln!("asynchronous replication lost {lost} of {acked} acknowledged session opens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_with_wait_loses_no_acknowledged_write() {
    // WAIT 1 needs a replica after the failover too: two replicas, one is promoted.
    let (lost, acked) = sentinel_failover(2, 1).await;
    assert!(acked > 0);
    assert_eq!(
        lost, 0,
        "WAIT 1: every acknowledged write reached the replica"
    );
}

/// Three cells named by slot spread, one per primary of the cluster: each tenant's nodes and
/// sessions work in their own cell, on their own primary, from either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cells_spread_over_the_cluster_primaries() {
    let cluster = Cluster::start().await;
    let ranges: Vec<Vec<(u16, u16)>> = cluster.slot_map().await.into_values().collect();
    let names = switchyard::config::cell::spread_names("switchyard", "cell", 3, &ranges);
    // `switchyard cell-names` prints the same names from the live slot map, as TOML.
    let urls = serde_json::to_string(&cluster.urls()).expect("json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["cell-names", "--count", "3"])
        .env(secret_env().0, secret_env().1)
        .env("SWITCHYARD_REDIS__MODE", "cluster")
        .env("SWITCHYARD_REDIS__URLS", &urls)
        .output()
        .expect("cell-names runs");
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{toml} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[derive(serde::Deserialize)]
    struct Printed {
        cells: Vec<switchyard::config::CellSpec>,
    }
    use figment::providers::Format;
    let parsed: Printed = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .expect("valid [[cells]] TOML");
    let printed: Vec<String> = parsed.cells.iter().map(|c| c.name.clone()).collect();
    assert_eq!(printed, names, "{toml}");
    assert!(parsed.cells[0].default && !parsed.cells[1].default);
    let tenant = |i: usize| format!("t{i}");
    let cells = |c: &mut Config| {
        c.cells = names
            .iter()
            .enumerate()
            .map(|(i, n)| switchyard::config::CellSpec {
                name: n.clone(),
                tenants: vec![tenant(i)],
                default: i == 0,
            })
            .collect();
    };
    let a = start_with(cfg(RedisMode::Cluster, cluster.urls(), cells)).await;
    let b = start_with(cfg(RedisMode::Cluster, cluster.urls(), cells)).await;
    let mut nodes = Vec::new();
    for i in 0..names.len() {
        let t = token(&[Scope::Node], None, Some(&tenant(i)));
        let url = with_given_token(&bare_ws_url(&a, "/ws/node"), &t);
        let delay = Duration::from_millis(5);
        nodes.push(AutoNode::start(&url, fixture("node_register_first"), delay).await);
    }
    let mut primaries = std::collections::BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let t = token(&[Scope::Session], None, Some(&tenant(i)));
        let url = with_given_token(&bare_ws_url(&b, "/ws/session"), &t);
        let (mut s, sid) = open_session(&url, fixture("session_init_one_way")).await;
        for u in 0..3 {
            s.send(&utterance(&sid, u)).await;
        }
        let got = terminals(&mut s, 3, T).await;
        assert!(
            got.iter().all(|v| v["type"] == "translation_result"),
            "cell {name}: {got:?}"
        );
        let tag = format!("{{switchyard:{name}}}:");
        let port = cluster
            .primary_of(cluster.slot(&tag).await)
            .await
            .expect("owner");
        primaries.insert(port);
        let mut direct = connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .expect("cell primary");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{tag}*"))
            .query_async(&mut direct)
            .await
            .expect("keys");
        assert!(
            keys.iter().any(|k| k.contains(":session:")) && keys.len() > 5,
            "cell {name} lives on primary {port}: {keys:?}"
        );
        invariants::check(&mut direct).await;
    }
    assert_eq!(primaries.len(), 3, "one cell per primary: {names:?}");
    let served: Vec<usize> = nodes.iter().map(AutoNode::jobs).collect();
    assert_eq!(
        served,
        [3, 3, 3],
        "each node served its own cell's utterances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_nodes_jobs_instances_and_survives_a_primary_kill() {
    let mut cluster = Cluster::start().await;
    let a = start_with(cfg(RedisMode::Cluster, cluster.urls(), |_| {})).await;
    let b = start_with(cfg(RedisMode::Cluster, cluster.urls(), |_| {})).await;
    // Node on A, session on B: every delivery crosses the inbox streams.
    let node = auto_node(&a).await;
    jobs_flow(&b, 5).await;
    jobs_flow(&a, 3).await;
    let slot = cluster.slot(&format!("{PREFIX}x")).await;
    let port = cluster.primary_of(slot).await.expect("slot owner");
    let mut direct = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("cell primary");
    invariants::check(&mut direct).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query_async(&mut direct)
        .await
        .expect("keys");
    assert!(keys.len() > 5, "the cell lives on its slot's primary");
    // Reads that pipeline several keys of the cell (admin API, /metrics) work on a cluster.
    let (status, nodes) = get_json(&http_url(&a, "/api/v1/nodes")).await;
    assert_eq!(status, 200, "{nodes}");
    assert!(nodes.to_string().contains(&node.id), "{nodes}");
    let m = metrics_text(&b).await;
    assert!(
        m.contains("switchyard_nodes{cell=\"main\",state=\"ready\"} 1"),
        "{m}"
    );

    // Cell tags: our CRC16 agrees with the cluster, and names picked by slot spread evenly
    // over the three primaries of the live slot map (names picked by hand need not).
    assert_eq!(switchyard::config::cell::slot(&format!("{PREFIX}x")), slot);
    let map = cluster.slot_map().await;
    let ranges: Vec<Vec<(u16, u16)>> = map.values().cloned().collect();
    let owner = |name: &str| {
        let s = switchyard::config::cell::slot(&format!("{{switchyard:{name}}}"));
        ranges
            .iter()
            .position(|r| r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s)))
            .expect("owned slot")
    };
    let picked = switchyard::config::cell::spread_names("switchyard", "cell", 6, &ranges);
    let mut per = vec![0; ranges.len()];
    for n in &picked {
        per[owner(n)] += 1;
    }
    assert_eq!(per, vec![2, 2, 2], "{picked:?}");
    let naive: Vec<usize> = ["eu", "us", "asia", "cell-a", "cell-b", "cell-c"]
        .iter()
        .map(|n| owner(n))
        .collect();
    eprintln!(
        "cell names by slot {picked:?} -> primaries {per:?}; hand-picked names -> primary index {naive:?}"
    );

    // Kill the primary holding the cell: its replica takes over.
    let (ready, watcher) = watch_readyz(&b);
    let load = Load::start(&b, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.node(port).kill9();
    let killed = Instant::now();
    let new_port = loop {
        match cluster.primary_of(slot).await {
            Some(p) if p != port => break p,
            _ => {}
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let promoted = Instant::now();
    until(Duration::from_secs(5), "a write after the takeover", || {
        let after = load
            .acked
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _)| *t > promoted);
        async move { after }
    })
    .await;
    let recovered = promoted.elapsed();
    let (acked, failed) = load.stop();
    let ready_again = ready_after(&ready, promoted).await;
    watcher.abort();
    eprintln!(
        "cluster failover: takeover seen {:?} after the kill; first write {recovered:?} after it; \
         /readyz ready again {ready_again:?} after it; {} acknowledged, {failed} refused",
        promoted.duration_since(killed),
        acked.len()
    );
    assert!(recovered < Duration::from_secs(5));
    assert!(ready_again.is_some_and(|d| d < Duration::from_secs(5)));
    jobs_flow(&b, 2).await;
    let mut direct = connect(&format!("redis://127.0.0.1:{new_port}"))
        .await
        .expect("new cell primary");
    // Node records and pools are consistent on the promoted replica too.
    invariants::check(&mut direct).await;
    node.stop();
}

/// Does any replica of `set` answer `ROLE` as a primary? None when one did not answer and
/// none said primary: unknown.
async fn any_replica_is_primary(set: &SentinelSet) -> Option<bool> {
    let mut all_answered = true;
    for r in &set.replicas {
        match is_primary_at(&r.url()).await {
            Some(true) => return Some(true),
            Some(false) => {}
            None => all_answered = false,
        }
    }
    all_answered.then_some(false)
}

/// `ROLE` of the node at `url` on a connection of its own (Sentinel kills a promoted
/// replica's clients), within 200 ms: is it a primary? None: no answer.
async fn is_primary_at(url: &str) -> Option<bool> {
    let role = tokio::time::timeout(Duration::from_millis(200), async {
        let mut c = connect(url).await.ok()?;
        redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut c)
            .await
            .ok()
    })
    .await;
    role.ok().flatten().map(|role| is_master(&role))
}

/// A `ROLE` reply that says primary.
fn is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(v) => {
            matches!(v.first(), Some(redis::Value::BulkString(r)) if r == b"master")
        }
        _ => false,
    }
}

/// A planned switch-over (`SENTINEL FAILOVER`): the old primary stays up, writable until
/// Sentinel reconfigures it, so no error says the primary moved; the instance polls the
/// sentinels (once a second, from its presence beat) and moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_switchover_is_followed_by_polling_the_sentinels() {
    let set = SentinelSet::start(1, &[]).await;
    let inst = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |_| {})).await;
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    let old = set.primary.addr();
    let mut s = set.sentinels[0].client().await;
    let _: String = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .query_async(&mut s)
        .await
        .expect("sentinel failover");
    let asked = Instant::now();
    let new = loop {
        match set.primary_addr().await {
            Some(a) if a != old => break a,
            _ => {}
        }
        assert!(asked.elapsed() < Duration::from_secs(15), "no switch-over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let promoted = Instant::now();
    // Only the polling may move the instance here: nothing asks /readyz (whose ROLE check
    // moves it off a demoted primary), and the old primary stays a writable primary until
    // Sentinel converts it (8 s or more after the switch, hard-coded in Sentinel), so no
    // call of the instance meets READONLY before then. The node in use is read in process.
    let mut old_primary = set.primary.client().await;
    until(
        Duration::from_secs(5),
        "the instance follows the switch-over",
        || async { inst.app.cells.default_cell().store.redis_node() == new },
    )
    .await;
    let role: redis::RedisResult<redis::Value> =
        redis::cmd("ROLE").query_async(&mut old_primary).await;
    let followed = promoted.elapsed();
    assert!(
        role.as_ref().is_ok_and(is_master),
        "the old primary was demoted before the instance followed ({followed:?}): it may \
         have followed a READONLY reply, not the polling: ROLE {role:?}"
    );
    eprintln!(
        "sentinel switch-over: promoted {:?} after SENTINEL FAILOVER, followed {followed:?} later",
        promoted.duration_since(asked),
    );
    let (status, body) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"].as_str(), Some(new.as_str()), "{body}");
    jobs_flow(&inst, 2).await;
    node.stop();
    let mut direct = connect(&format!("redis://{new}"))
        .await
        .expect("the new primary");
    invariants::check(&mut direct).await;
}

#[path = "topologies/migration.rs"]
mod migration;

#[path = "topologies/sentinels.rs"]
mod sentinels;

#[path = "topologies/sentinel_epochs.rs"]
mod sentinel_epochs;

/// The Redis ACL user docs/operations.md gives, with the one cluster command it names for a
/// Redis Cluster (`CLUSTER SLOTS`), is enough for an instance there: jobs, the admin reads and
/// `/metrics` run as that user, and no node's `ACL LOG` holds a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_on_a_cluster() {
    const RULES: &str = "~{switchyard:*}* resetchannels -@all +@read +@write +@stream \
        +@scripting -@dangerous +role +info +wait +time +ping +hello +client|setname \
        +multi +exec +discard +unwatch +cluster|slots";
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("operations.md");
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat(&docs).contains("add `+cluster|slots`"),
        "docs/operations.md names other cluster commands"
    );
    let cluster = Cluster::start_steady().await;
    for n in &cluster.nodes {
        acl_user(&mut n.client().await, RULES).await;
    }
    let inst = start_with(cfg(RedisMode::Cluster, cluster.urls(), |c| {
        c.redis.username = Some("switchyard".into());
        c.redis.password = Some("acl-test-password".into());
    }))
    .await;
    let _node = auto_node(&inst).await;
    let (mut s, sid) = session_on(&inst).await;
    for u in 0..3 {
        s.send(&utterance(&sid, u)).await;
    }
    let got = terminals(&mut s, 3, T).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
    admin_reads_ok(
        &inst,
        &["/api/v1/nodes", "/api/v1/pools", "/readyz", "/metrics"],
    )
    .await;
    for n in &cluster.nodes {
        let mut c = n.client().await;
        let refused: Vec<redis::Value> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut c)
            .await
            .expect("acl log");
        assert!(
            refused.is_empty(),
            "{}: commands refused: {refused:?}",
            n.addr()
        );
    }
}

/// On a Redis Cluster, a `job_result` whose reply was lost (the cell's primary busy past
/// `redis.timeout_ms`; it commits after the call gave up) is ambiguous: the node is told
/// Redis is away, and the session's result is read back from the log, once (the lost-reply
/// recovery ran only on one redis-server in the tests before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_cluster_is_recovered_once() {
    let cluster = Cluster::start_steady().await;
    let inst = start_with(cfg(RedisMode::Cluster, cluster.urls(), |c| {
        c.redis.timeout_ms = 500;
    }))
    .await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    let port = cluster
        .primary_of(switchyard::config::cell::slot("{switchyard:main}"))
        .await
        .expect("the cell's primary");
    let primary = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("primary");
    // busy 800 ms: the call times out at 500, and runs after the spin
    spin(primary, 800).await;
    n.send(&answer(&job, &nid, "once")).await;
    let err = next_of(&mut n, "error", T).await.expect("the node is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (&got[0]["type"], &got[0]["utterance_index"]),
        (
            &serde_json::json!("translation_result"),
            &serde_json::json!(0)
        )
    );
    assert!(
        next_of(&mut s, "translation_result", Duration::from_millis(500))
            .await
            .is_none(),
        "a second copy"
    );
}

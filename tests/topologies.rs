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

/// The tenant the cells of [`cells_of`] give the `i`th cell.
fn tenant(i: usize) -> String {
    format!("t{i}")
}

/// `[[cells]]` of `names`: the `i`th cell holds tenant `t<i>`, the first is the default.
fn cells_of(names: &[String]) -> impl Fn(&mut Config) + Copy + '_ {
    move |c: &mut Config| {
        c.cells = names
            .iter()
            .enumerate()
            .map(|(i, n)| switchyard::config::CellSpec {
                name: n.clone(),
                tenants: vec![tenant(i)],
                default: i == 0,
            })
            .collect();
    }
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

/// As tenant `t<i>` ([`cells_of`]): open a session on `inst`, send `n` utterances, expect
/// `n` results.
async fn tenant_jobs_flow(inst: &Running, i: usize, n: u64) {
    let t = token(&[Scope::Session], None, Some(&tenant(i)));
    let url = with_given_token(&bare_ws_url(inst, "/ws/session"), &t);
    let (mut s, sid) = open_session(&url, fixture("session_init_one_way")).await;
    for u in 0..n {
        s.send(&utterance(&sid, u)).await;
    }
    let got = terminals(&mut s, n as usize, T).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "tenant {}: {got:?}",
        tenant(i)
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

#[path = "topologies/cluster.rs"]
mod cluster;

#[path = "topologies/cell_readiness.rs"]
mod cell_readiness;

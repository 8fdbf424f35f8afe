//! The sentinels' configuration epochs: a sentinel behind a switch-over (naming the old
//! primary, which still answers `ROLE` as one until Sentinel demotes it) neither moves the
//! instance back to it nor keeps it there; the promoted replica is followed while the
//! failover's leader still reconfigures the other replicas; a sentinel whose ACL refuses
//! `SENTINEL MASTER` (no epoch) still names the primary; an answer behind is followed only
//! once the node in use is silent and no other answer vouches for it.

use super::sentinels::sentinel_cmd;
use super::*;

/// Review finding: after a switch-over the old primary answers `ROLE` as a primary until
/// Sentinel demotes it, and a sentinel still behind the failover names it. The instance
/// took the first answer naming a primary, so such a sentinel could move it back to the
/// old primary, where every write is lost at the demotion. Answers now carry the
/// sentinels' configuration epoch, and one naming another node with an older epoch than
/// the node in use is not followed while that node is still a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_behind_a_switchover_does_not_move_the_instance_back() {
    let set = SentinelSet::start(1, &[]).await;
    let inst = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |c| {
        c.redis.timeout_ms = 500;
    }))
    .await;
    let store = &inst.app.cells.default_cell().store;
    let old = set.primary.addr();
    let new = set.replicas[0].addr();
    sentinel_cmd(&set.sentinels[0], &["FAILOVER", MASTER]).await;
    until(
        Duration::from_secs(15),
        "the instance follows the switch-over",
        || async { store.redis_node() == new },
    )
    .await;
    // Only the first sentinel answers from now on, and it is behind: it monitors the old
    // primary afresh (epoch 0), which nothing demotes while the others are stopped.
    for s in &set.sentinels[1..] {
        s.signal("STOP");
    }
    let behind = &set.sentinels[0];
    sentinel_cmd(behind, &["REMOVE", MASTER]).await;
    let port = set.primary.port.to_string();
    sentinel_cmd(behind, &["MONITOR", MASTER, "127.0.0.1", &port, "2"]).await;
    sentinel_cmd(
        behind,
        &["SET", MASTER, "down-after-milliseconds", "600000"],
    )
    .await;
    assert_eq!(set.primary_addr().await, Some(old.clone()));
    assert_eq!(
        is_primary_at(&set.primary.url()).await,
        Some(true),
        "the old primary still answers as one"
    );
    // Three polls (one a second, from the presence beat).
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            store.redis_node(),
            new,
            "moved back to the old primary after {:?}",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &set.sentinels[1..] {
        s.signal("CONT");
    }
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    invariants::check(&mut connect(&format!("redis://{new}")).await.expect("new")).await;
    node.stop();
}

/// Review finding: `SENTINEL MASTER` answers the old primary's address until the failover
/// ends, with the new epoch already; only `get-master-addr-by-name` names the promoted
/// replica while the leader reconfigures the other replicas. Asked for both (the epoch
/// from the first, the address from the second), the instance follows the promotion
/// while that phase lasts: here until a stopped replica comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promoted_replica_is_followed_while_the_leader_reconfigures_the_others() {
    let set = SentinelSet::start(2, &[]).await;
    let leader = &set.sentinels[0];
    let inst = start_with(cfg(RedisMode::Sentinel, vec![leader.url()], |_| {})).await;
    let store = &inst.app.cells.default_cell().store;
    let (old, new) = (set.primary.addr(), set.replicas[0].addr());
    until(Duration::from_secs(10), "ready", || async {
        store.redis_node() == old
    })
    .await;
    // The second replica is never promoted, and stops: the failover's reconfiguration
    // phase waits for it (10 s, Sentinel's own bound, as long as its link is not given
    // up: after half the down-after time, raised to a minute).
    let mut r1 = set.replicas[1].client().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-priority")
        .arg("0")
        .query_async(&mut r1)
        .await
        .expect("replica-priority");
    sentinel_cmd(leader, &["SET", MASTER, "failover-timeout", "60000"]).await;
    sentinel_cmd(leader, &["SET", MASTER, "down-after-milliseconds", "60000"]).await;
    set.replicas[1].signal("STOP");
    sentinel_cmd(leader, &["FAILOVER", MASTER]).await;
    let r0 = set.replicas[0].url();
    until(
        Duration::from_secs(15),
        "the first replica promoted",
        || async { is_primary_at(&r0).await == Some(true) },
    )
    .await;
    let promoted = Instant::now();
    until(
        Duration::from_secs(10),
        "the instance follows the promoted replica",
        || async { store.redis_node() == new },
    )
    .await;
    let followed = promoted.elapsed();
    // Still in that phase: the leader's own record names the old primary.
    assert_eq!(sentinel_master_ip_port(leader).await, old);
    eprintln!("followed {followed:?} after the promotion, while the leader reconfigured");
    set.replicas[1].signal("CONT");
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    invariants::check(&mut connect(&format!("redis://{new}")).await.expect("new")).await;
    node.stop();
}

/// The `ip:port` field of `SENTINEL MASTER` on `s` (what it names as the master's address).
async fn sentinel_master_ip_port(s: &common::topology::Proc) -> String {
    let mut c = s.client().await;
    let fields: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER)
        .query_async(&mut c)
        .await
        .expect("sentinel master");
    format!(
        "{}:{}",
        fields.get("ip").map_or("?", String::as_str),
        fields.get("port").map_or("?", String::as_str)
    )
}

/// A sentinel whose ACL grants `get-master-addr-by-name` and not `SENTINEL MASTER` (the
/// permission the instance needed before it read epochs) still gets the instance its
/// primary: the epoch is then unknown, and nothing is set aside for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_refuses_sentinel_master_still_names_the_primary() {
    let set = SentinelSet::start_unelected(0, &[]).await;
    let s = &set.sentinels[0];
    let mut c = s.client().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-sentinel|master")
        .query_async(&mut c)
        .await
        .expect("acl setuser");
    let refused: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER)
        .query_async(&mut s.client().await)
        .await;
    assert!(
        refused.is_err(),
        "the ACL refuses SENTINEL MASTER: {refused:?}"
    );
    let inst = start_with(cfg(RedisMode::Sentinel, vec![s.url()], |_| {})).await;
    until(Duration::from_secs(10), "ready", || async {
        get_json(&http_url(&inst, "/readyz")).await.0 == 200
    })
    .await;
    assert_eq!(
        inst.app.cells.default_cell().store.redis_node(),
        set.primary.addr()
    );
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 1).await;
    node.stop();
}

/// Review finding: the first answer that named a primary won, so a sentinel behind a
/// switch-over, naming the node in use (the old primary, still answering `ROLE` as one),
/// kept the instance there whenever it answered first: writes the demotion loses. The
/// answers still coming now get a moment to name a primary with a newer epoch.
///
/// Here the behind sentinel stays behind: it monitors the primary alone, as a user the
/// data nodes' ACL denies `PUBLISH` and `SUBSCRIBE`, so no hello message reaches it or
/// announces it. The up-to-date one answers 30 ms after it (a delaying proxy), and no
/// sentinel demotes the old primary for 40 minutes (hello period raised to ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_answer_coming_second_still_moves_the_instance_off_the_old_primary() {
    let set = SentinelSet::start(1, &[]).await;
    let leader = &set.sentinels[0];
    // No sentinel converts the old primary for 40 minutes (four hello periods): the instance
    // cannot be moved off it by a demotion, only by the newer answer.
    for s in &set.sentinels {
        sentinel_cmd(s, &["DEBUG", "publish-period", "600000"]).await;
    }
    // On the replica too: a sentinel whose AUTH fails goes on as the default user.
    for data in std::iter::once(&set.primary).chain(&set.replicas) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("lone")
            .arg("on")
            .arg(">lone-pass")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .arg("-publish")
            .arg("-subscribe")
            .arg("-psubscribe")
            .query_async(&mut data.client().await)
            .await
            .expect("acl setuser");
    }
    let opts = common::topology::SentinelOpts {
        primary_user: Some("lone"),
        primary_password: Some("lone-pass"),
        down_after_ms: Some(600_000),
        ..Default::default()
    };
    let behind = common::topology::Proc::sentinel_with(MASTER, set.primary.port, &opts);
    behind.wait_up().await;
    let (slow_leader, proxy) = slow_proxy(leader.addr(), Duration::from_millis(30)).await;
    let inst = start_with(cfg(
        RedisMode::Sentinel,
        vec![behind.url(), slow_leader],
        |_| {},
    ))
    .await;
    let store = &inst.app.cells.default_cell().store;
    let (old, new) = (set.primary.addr(), set.replicas[0].addr());
    until(Duration::from_secs(10), "ready on the primary", || async {
        store.redis_node() == old
    })
    .await;
    sentinel_cmd(leader, &["FAILOVER", MASTER]).await;
    until(
        Duration::from_secs(15),
        "the leader names the replica",
        || async { sentinel_addr(leader).await == new },
    )
    .await;
    until(
        Duration::from_secs(5),
        "the instance follows the promoted replica",
        || async { store.redis_node() == new },
    )
    .await;
    assert_eq!(
        sentinel_addr(&behind).await,
        old,
        "the lone sentinel was behind all along"
    );
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    invariants::check(&mut connect(&format!("redis://{new}")).await.expect("new")).await;
    node.stop();
    proxy.abort();
}

/// What `s` names as the master's address ("" when nothing).
async fn sentinel_addr(s: &common::topology::Proc) -> String {
    common::topology::named_primary(s).await.unwrap_or_default()
}

/// A TCP proxy to `target` (`host:port`) that holds every chunk of the replies `delay`
/// before passing it on; its `redis://` URL and its task.
async fn slow_proxy(target: String, delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut up_r, mut up_w) = upstream.into_split();
                // The client's end closes the sentinel's side too, which ends the replies.
                let requests = async {
                    let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
                    let _ = up_w.shutdown().await;
                };
                let replies = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = up_r.read(&mut buf).await
                        && n > 0
                    {
                        tokio::time::sleep(delay).await;
                        if client_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::join!(requests, replies);
            });
        }
    });
    (format!("redis://{addr}"), task)
}

/// The other side of setting behind answers aside: when the node in use is gone for good
/// (here killed) and the only sentinel answering names another primary with an older epoch
/// (sentinels rebuilt from scratch, whose epochs start again at 0), the instance follows it
/// once the node in use has been silent in two rounds in a row. One silent round is not
/// enough (a busy primary); never following would leave the instance without a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_behind_answer_is_followed_once_the_node_in_use_stays_silent() {
    let mut set = SentinelSet::start(1, &[]).await;
    let (inst, old, _) = followed_switchover(&set).await;
    let store = &inst.app.cells.default_cell().store;
    // Two sentinels hang; the third is rebuilt (epoch 0) naming the old primary.
    for s in &set.sentinels[..2] {
        s.signal("STOP");
    }
    rebuild_naming_the_old_primary(&set.sentinels[2], &set).await;
    assert_eq!(is_primary_at(&set.primary.url()).await, Some(true));
    set.replicas[0].kill9();
    until(
        Duration::from_secs(10),
        "the instance follows the rebuilt sentinel once its node stays silent",
        || async { store.redis_node() == old },
    )
    .await;
    for s in &set.sentinels[..2] {
        s.signal("CONT");
    }
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    invariants::check(&mut set.primary.client().await).await;
    node.stop();
}

/// The vouch rule: an answer behind the node in use is never taken while another answer
/// still names the node in use with its epoch, even when that node is silent round after
/// round (here stopped: a primary stalled by its disk, say). The sentinel that vouches for
/// it is the one that knows; following the one behind would move the writes to an old
/// primary that a later reconfiguration demotes, losing them. The instance waits, and
/// carries on where it was once the node in use answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_behind_answer_is_not_followed_while_another_vouches_for_the_silent_node_in_use() {
    let set = SentinelSet::start(1, &[]).await;
    let (inst, old, new) = followed_switchover(&set).await;
    let store = &inst.app.cells.default_cell().store;
    // One sentinel hangs; one is rebuilt (epoch 0) naming the old primary; the one left
    // names the node in use with its epoch, and fails nothing over while it is stopped.
    set.sentinels[1].signal("STOP");
    let (up_to_date, rebuilt) = (&set.sentinels[0], &set.sentinels[2]);
    rebuild_naming_the_old_primary(rebuilt, &set).await;
    sentinel_cmd(
        up_to_date,
        &["SET", MASTER, "down-after-milliseconds", "600000"],
    )
    .await;
    assert_eq!(sentinel_addr(up_to_date).await, new);
    assert_eq!(sentinel_addr(rebuilt).await, old);
    assert_eq!(is_primary_at(&set.primary.url()).await, Some(true));
    set.replicas[0].signal("STOP");
    // Five rounds (one a second, and after each failed call), every one with the node in
    // use silent: without the rule the third would follow the rebuilt sentinel.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            store.redis_node(),
            new,
            "followed the sentinel behind after {:?}",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set.replicas[0].signal("CONT");
    set.sentinels[1].signal("CONT");
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    assert_eq!(store.redis_node(), new);
    invariants::check(&mut connect(&format!("redis://{new}")).await.expect("new")).await;
    node.stop();
}

/// An instance (`redis.timeout_ms` 500) that followed a switch-over `set`'s first sentinel
/// made, with no sentinel to convert the old primary meanwhile (four hello periods: 40
/// minutes); the old and new primaries' addresses.
async fn followed_switchover(set: &SentinelSet) -> (Running, String, String) {
    for s in &set.sentinels {
        sentinel_cmd(s, &["DEBUG", "publish-period", "600000"]).await;
    }
    let inst = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |c| {
        c.redis.timeout_ms = 500;
    }))
    .await;
    let (old, new) = (set.primary.addr(), set.replicas[0].addr());
    sentinel_cmd(&set.sentinels[0], &["FAILOVER", MASTER]).await;
    let store = &inst.app.cells.default_cell().store;
    until(
        Duration::from_secs(15),
        "the instance follows the switch-over",
        || async { store.redis_node() == new },
    )
    .await;
    (inst, old, new)
}

/// `s` forgets the master and monitors the old primary afresh (epoch 0), failing nothing
/// over for ten minutes: a sentinel rebuilt from scratch.
async fn rebuild_naming_the_old_primary(s: &common::topology::Proc, set: &SentinelSet) {
    sentinel_cmd(s, &["REMOVE", MASTER]).await;
    let port = set.primary.port.to_string();
    sentinel_cmd(s, &["MONITOR", MASTER, "127.0.0.1", &port, "2"]).await;
    sentinel_cmd(s, &["SET", MASTER, "down-after-milliseconds", "600000"]).await;
}

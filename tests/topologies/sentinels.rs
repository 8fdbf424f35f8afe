//! Asking the sentinels: a sentinel that accepts connections and never answers (a hung
//! pod; the primary's pod often carries one) costs no wait while another answers; a
//! sentinel that names a node which is not a primary (stale, or mid-failover), or a
//! primary demoted behind the sentinels' back, gets the instance no connection to it. (A
//! sentinel behind a switch-over: `sentinel_epochs.rs`.)

use super::*;

/// Review finding: the sentinels were asked one after another, and each failing call that
/// queued behind a re-resolution asked again (the answer was stamped before asking): with
/// the first listed sentinel hung, every resolution waited `redis.timeout_ms` for it, once
/// per queued call. They are now asked at once, and a fresh answer is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sentinel_listed_first_costs_no_wait() {
    let set = SentinelSet::start(0, &[]).await;
    // Accepts connections, never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("redis://{}", hung.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            socks.push(s);
        }
    });
    let mut urls = vec![hung_url];
    urls.extend(set.sentinel_urls());
    let started = Instant::now();
    let inst = start_with(cfg(RedisMode::Sentinel, urls, |c| {
        c.redis.timeout_ms = 3_000
    }))
    .await;
    until(Duration::from_secs(10), "ready", || async {
        get_json(&http_url(&inst, "/readyz")).await.0 == 200
    })
    .await;
    let ready = started.elapsed();
    // 20 session opens at once, each a script call through the resolved primary.
    let opens = (0..20).map(|_| {
        let url = ws_url(&inst, "/ws/session");
        async move { open_session(&url, fixture("session_init_one_way")).await }
    });
    let t = Instant::now();
    futures_util::future::join_all(opens).await;
    eprintln!(
        "ready {ready:?} with a hung sentinel first; 20 opens {:?}",
        t.elapsed()
    );
    assert!(
        ready < Duration::from_millis(2_500),
        "the instance waited for the hung sentinel ({ready:?}; its timeout is 3 s)"
    );
    held.abort();
}

/// `SENTINEL <args...>` on `s`, expecting `OK`.
pub(super) async fn sentinel_cmd(s: &common::topology::Proc, args: &[&str]) {
    let mut c = s.client().await;
    let mut cmd = redis::cmd("SENTINEL");
    for a in args {
        cmd.arg(*a);
    }
    let _: () = cmd
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("SENTINEL {args:?}: {e}"));
}

/// One script call through the instance's connector: refused while it knows no primary.
async fn refused(inst: &Running, sid: &str) {
    let store = &inst.app.cells.default_cell().store;
    match store
        .session_open(sid, false, "t/1", "n0", None, 0, &[])
        .await
    {
        Err(e) => assert!(e.is_unavailable(), "{e}"),
        Ok(o) => panic!("a session opened on a non-primary: {:?}", o.reply),
    }
}

/// Review finding: the first address a sentinel named became the primary, unchecked. A stale
/// sentinel naming a replica sent every write there (READONLY) until a failover; one naming
/// an old primary about to be demoted would have lost them. Each named address is now
/// checked with `ROLE` before a connection to it is handed out, and another sentinel's
/// answer is taken when the first one's is not a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_gets_no_connection_to_it() {
    let set = SentinelSet::start_unelected(1, &[]).await;
    let (primary, replica) = (set.primary.addr(), set.replicas[0].addr());
    // The first sentinel names the replica.
    let stale = &set.sentinels[0];
    sentinel_cmd(stale, &["REMOVE", MASTER]).await;
    let port = set.replicas[0].port.to_string();
    sentinel_cmd(stale, &["MONITOR", MASTER, "127.0.0.1", &port, "2"]).await;

    // An instance that knows only that sentinel has no primary, and says so.
    let only_stale = start_with(cfg(RedisMode::Sentinel, vec![stale.url()], |_| {})).await;
    // Not ready for 1.5 s — longer than an instance takes to start — and for the reason that
    // it has no primary (a fresh instance is unready anyway until its consumer first reads).
    let (mut status, mut body) = (0, serde_json::Value::Null);
    let until_t = std::time::Instant::now() + Duration::from_millis(1_500);
    while std::time::Instant::now() < until_t {
        (status, body) = get_json(&http_url(&only_stale, "/readyz")).await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("cell main: redis unavailable"),
        "unready for want of a primary: {body}"
    );
    refused(&only_stale, "s-0000000a").await;
    let store = &only_stale.app.cells.default_cell().store;
    assert_ne!(
        store.redis_node(),
        replica,
        "the instance took the replica a stale sentinel named for its primary"
    );
    assert_eq!(status, 503, "{body}");

    // Listed first among good sentinels, it costs nothing: the primary is found.
    let mut urls = vec![stale.url()];
    urls.extend(set.sentinel_urls().into_iter().skip(1));
    let inst = start_with(cfg(RedisMode::Sentinel, urls, |_| {})).await;
    until(Duration::from_secs(10), "ready", || async {
        get_json(&http_url(&inst, "/readyz")).await.0 == 200
    })
    .await;
    assert_eq!(inst.app.cells.default_cell().store.redis_node(), primary);
    let node = auto_node(&inst).await;
    jobs_flow(&inst, 2).await;
    invariants::check(&mut set.primary.client().await).await;
    node.stop();
}

/// Review finding: a primary demoted while the sentinels still named it (a stale sentinel,
/// the first seconds of a switch-over) kept the instance's connections: every write failed
/// with READONLY, and re-asking the sentinels changed nothing since they named the same
/// address. A READONLY now has the named primary's `ROLE` checked, and a node that is no
/// primary is dropped: calls are refused until a primary is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_the_sentinels_still_name_is_dropped() {
    let set = SentinelSet::start_unelected(1, &[]).await;
    let primary = set.primary.addr();
    // One sentinel goes on naming the primary for minutes (no failover, no
    // reconfiguration); the others stop monitoring it.
    for s in &set.sentinels[1..] {
        sentinel_cmd(s, &["REMOVE", MASTER]).await;
    }
    let named = &set.sentinels[0];
    sentinel_cmd(named, &["SET", MASTER, "down-after-milliseconds", "600000"]).await;
    sentinel_cmd(named, &["SET", MASTER, "failover-timeout", "600000"]).await;
    let inst = start_with(cfg(RedisMode::Sentinel, vec![named.url()], |_| {})).await;
    until(Duration::from_secs(10), "ready", || async {
        get_json(&http_url(&inst, "/readyz")).await.0 == 200
    })
    .await;
    let store = &inst.app.cells.default_cell().store;
    assert_eq!(store.redis_node(), primary);

    // The replica takes over behind the sentinel's back; the old primary follows it.
    let mut r = set.replicas[0].client().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut r)
        .await
        .expect("replicaof no one");
    let mut p = set.primary.client().await;
    let port = set.replicas[0].port;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query_async(&mut p)
        .await
        .expect("replicaof");
    assert_eq!(set.primary_addr().await, Some(primary.clone()));

    // Calls meet READONLY; the next re-resolution (at most 200 ms after the last one, which
    // the presence beat may just have made) drops the node.
    let demoted = Instant::now();
    for i in 0.. {
        refused(&inst, &format!("s-000001{i:02}")).await;
        if store.redis_node() != primary || demoted.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        store.redis_node(),
        primary,
        "the instance kept the demoted primary the sentinel still names for {:?}",
        demoted.elapsed()
    );
    refused(&inst, "s-0000000c").await; // no primary known
    let (status, body) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 503, "{body}");
}

/// After a switch-over, the inbox consumer follows the primary the sentinels name at its
/// next read. It kept reading its inbox on the old primary, which stays a writable primary
/// for 8 s or more after a `SENTINEL FAILOVER`, while the other instances, on the new one,
/// wrote its nodes' `job_assign`s there: they waited until Sentinel demoted the old primary
/// (topology audit). Here a node on `a` serves a session on `b` within 3 s of both having
/// followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_consumer_follows_a_switchover() {
    let set = SentinelSet::start(1, &[]).await;
    let a = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |_| {})).await;
    let b = start_with(cfg(RedisMode::Sentinel, set.sentinel_urls(), |_| {})).await;
    let node = auto_node(&a).await;
    jobs_flow(&b, 1).await;
    let old = set.primary.addr();
    sentinel_cmd(&set.sentinels[0], &["FAILOVER", MASTER]).await;
    let new = set.replicas[0].addr();
    for inst in [&a, &b] {
        until(
            Duration::from_secs(15),
            "both follow the switch-over",
            || async { inst.app.cells.default_cell().store.redis_node() == new },
        )
        .await;
    }
    let mut old_primary = set.primary.client().await;
    let (mut s, sid) =
        open_session(&ws_url(&b, "/ws/session"), fixture("session_init_one_way")).await;
    s.send(&utterance(&sid, 0)).await;
    let got = terminals(&mut s, 1, Duration::from_secs(3)).await;
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    // (what this test is about: the old primary was still one, and writable)
    let role: redis::RedisResult<redis::Value> =
        redis::cmd("ROLE").query_async(&mut old_primary).await;
    assert!(
        role.as_ref().is_ok_and(is_master),
        "the old primary {old} was demoted already: ROLE {role:?}"
    );
    node.stop();
    let mut direct = connect(&format!("redis://{new}"))
        .await
        .expect("new primary");
    invariants::check(&mut direct).await;
}

//! Presence lapses: an instance whose presence expired while it was alive learns at its
//! next beat that messages for its connections were lost (a takeover of its inbox, or a
//! delivery dropped for want of its presence) and closes them so they resume; one that lost
//! nothing (Redis wiped, or not beaten yet) keeps them; and connections bound after a wipe are
//! reachable before their instance beats again.

use super::*;
#[tokio::test]
async fn an_instance_whose_presence_lapsed_closes_its_connections_so_they_resume() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&a, None).await;
    let (mut s, _) = session_on(&a).await;
    // As if the instance stalled past its presence TTL and a peer took its inbox over.
    let id = a.app.instance_id.clone();
    let _: () = redis::cmd("DEL")
        .arg(format!("{PREFIX}instance:{id}"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM")
        .arg(format!("{PREFIX}instances"))
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    // the tombstone a takeover leaves
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}taken:{id}"))
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n.expect_close().await, Some(1012));
    assert_eq!(s.expect_close().await, Some(1012));
    assert_eq!(metric(&a, "switchyard_presence_lapses_total").await, 1.0);
    // The node's echo of our close is not an orderly shutdown of the node: it keeps its
    // grace (and its jobs) to reconnect.
    let ids: Vec<String> = c
        .zrange(format!("{PREFIX}nodes:index"), 0, -1)
        .await
        .unwrap();
    let key = format!("{PREFIX}node:{}", ids[0]);
    let mut state = String::new();
    for _ in 0..40 {
        let h: std::collections::HashMap<String, String> = c.hgetall(&key).await.unwrap();
        state = h.get("state").cloned().unwrap_or_default();
        if state != "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "disconnected", "{key}");
    invariants::check(&mut c).await;
}

/// A beat that finds the tombstone, and whose reply is lost (here: a beat made by hand, its
/// reply dropped), no longer takes the signal with it: the tombstone stays until a beat
/// acknowledges it once the connections are closed, so the instance's own next beat still
/// learns it lapsed (lifecycle audit: the beat deleted it, and a lost reply left the
/// connections open with their messages missing, for good).
#[tokio::test]
async fn a_lapse_whose_beat_reply_is_lost_is_reported_again() {
    let redis = RedisServer::start().await;
    // beats 2 s apart: the hand-made one below comes between two of them
    let a = start_tweaked(&redis, |c| {
        c.instance.beat_interval_ms = 2_000;
        c.instance.presence_ttl_ms = 6_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut s, _) = session_on(&a).await;
    let id = a.app.instance_id.clone();
    let tomb = format!("{PREFIX}taken:{id}");
    let _: () = redis::cmd("SET")
        .arg(&tomb)
        .arg("lost 1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let store = &a.app.cells.default_cell().store;
    let lost = store
        .instance_beat(&id, 1, false, None)
        .await
        .expect("beat");
    assert!(lost.reply.lapsed, "{:?}", lost.reply);
    assert_eq!(lost.reply.tomb.as_deref(), Some("lost 1"));
    // its reply "lost": nothing closed; the instance's own beat closes the session
    assert_eq!(s.expect_close().await, Some(1012));
    assert_eq!(metric(&a, "switchyard_presence_lapses_total").await, 1.0);
    // and its next beat acknowledged it: gone, no second round
    eventually(
        Duration::from_secs(6),
        "the tombstone acknowledged",
        || async {
            let left: bool = c.clone().exists(&tomb).await.unwrap();
            (!left).then_some(())
        },
    )
    .await;
    assert_eq!(metric(&a, "switchyard_presence_lapses_total").await, 1.0);
    invariants::check(&mut c).await;
}

/// The next terminal message on `s` within `timeout`, or its close code if it closes first.
async fn terminal_or_close(
    s: &mut WsClient,
    timeout: Duration,
) -> Result<serde_json::Value, Option<u16>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next(left).await {
            Ok(v) if is_terminal(&v) => return Ok(v),
            Ok(_) => continue,
            Err(common::ws::Ended::Closed(code)) => return Err(code),
            Err(common::ws::Ended::Timeout) => {
                panic!("neither the result nor a close within {timeout:?}: the result is lost")
            }
        }
    }
}

/// An instance stalls just past its presence TTL and no peer has beaten since (so no
/// takeover): a peer's script that produces a result for one of its sessions finds no
/// presence. The instance is still listed, so the result waits in its inbox and reaches the
/// session when the instance reads it (an earlier version dropped it and relied on the
/// lapse path: close with 1012, resume, the result from the log; the test accepts either,
/// never a hole in the session's stream). Beats are 2 s apart here; the presence is deleted
/// right after one of A's beats, so the node's answer falls before the next.
#[tokio::test]
async fn a_result_for_an_instance_whose_presence_expired_reaches_the_session() {
    let redis = RedisServer::start().await;
    let slow_beat = |c: &mut switchyard::config::Config| {
        c.instance.beat_interval_ms = 2_000;
        c.instance.presence_ttl_ms = 4_000;
    };
    let a = start_tweaked(&redis, slow_beat).await;
    let b = start_tweaked(&redis, slow_beat).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&b, None).await;
    let (mut s, ack) =
        open_session_ack(&ws_url(&a, "/ws/session"), fixture("session_init_one_way")).await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    let resume_token = ack["resume_token"].as_str().unwrap().to_string();
    s.send(&utterance(&sid, 0)).await;
    let j = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    // Right after one of A's beats (its score in `instances` moves), A's presence goes.
    let id = a.app.instance_id.clone();
    let score = |mut c: redis::aio::MultiplexedConnection, id: String| async move {
        let v: Option<f64> = c.zscore(format!("{PREFIX}instances"), id).await.ok()?;
        v
    };
    let before = score(c.clone(), id.clone()).await;
    eventually(T, "a beat of A", || {
        let (c, id) = (c.clone(), id.clone());
        async move { (score(c, id).await != before).then_some(()) }
    })
    .await;
    let _: () = c.del(format!("{PREFIX}instance:{id}")).await.unwrap();
    n.send(&answer(&j, &nid, "kept")).await;
    // Either the result arrives, or A closes the session (1012) and a resume brings it.
    let got = match terminal_or_close(&mut s, Duration::from_secs(6)).await {
        Ok(v) => v,
        Err(code) => {
            assert_eq!(code, Some(1012), "A closed the session with another code");
            let mut init = fixture("session_init_one_way");
            init["resume_session_id"] = json!(sid);
            init["resume_token"] = json!(resume_token);
            init["last_received_index"] = json!(-1);
            let mut s2 = WsClient::connect(&ws_url(&b, "/ws/session")).await;
            s2.send(&init).await;
            assert_eq!(s2.recv_type("session_init_ack").await["resumed"], true);
            terminals(&mut s2, 1, T).await.remove(0)
        }
    };
    assert_eq!(got["utterance_index"], 0, "{got}");
    assert_eq!(got["text_translated"], "kept", "{got}");
    invariants::check(&mut c).await;
}

/// A takeover of a long inbox runs in batches (`inbox.takeover_batch`); the first batch
/// already deletes session messages of the dead instance (they are in the result log). If
/// the instance was only stalled and beats before the next batch, the takeover stops — and
/// the instance must still learn that it was (partly) taken over: its beat reports
/// `lapsed`, so it closes its sockets and its sessions resume and get every result. Driven
/// through the scripts (tests/common/cell.rs): A holds the session, B the node.
#[tokio::test]
async fn an_instance_that_beats_between_two_batches_of_its_takeover_learns_it_lapsed() {
    use common::cell::{Answer, Cell};
    let redis = RedisServer::start().await;
    let mut cell = Cell::with(&redis, |c| c.inbox.takeover_batch = 1)
        .await
        .expect("cell");
    let (ia, ib) = (cell.inst[0].id.clone(), cell.inst[1].id.clone());
    cell.register(0, 1, 0, 4).await.expect("n0 on B");
    cell.open(0, 0).await.expect("s0 on A");
    cell.stall(0).await.expect("A's consumer stalls");
    for _ in 0..2 {
        cell.submit(0, false, false).await.expect("submit");
    }
    let bad = cell.check().await; // B's consumer hands the node its two job_assigns
    assert!(bad.is_empty(), "{bad:#?}");
    for _ in 0..2 {
        cell.result(0, 0, Answer::Ok).await.expect("result");
    }
    let mut c = redis.client().await;
    let inbox: u64 = c.xlen(format!("{PREFIX}inbox:{ia}")).await.unwrap();
    assert!(
        inbox >= 6,
        "two results with their ui_events wait in A's inbox: {inbox}"
    );
    // A's presence lapses; B's beats take the first three entries over, one per call (the
    // first result's ui_events and the result itself), then A beats.
    let _: () = redis::pipe()
        .del(format!("{PREFIX}instance:{ia}"))
        .zadd(format!("{PREFIX}instances"), &ia, 0)
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..3 {
        let out = cell.inst[1]
            .store
            .instance_beat(&ib, 1, false, None)
            .await
            .unwrap();
        assert!(
            out.reply.more && out.reply.took_over.is_none(),
            "{:?}",
            out.reply
        );
        cell.clients.take(1, &out);
    }
    let out = cell.inst[0]
        .store
        .instance_beat(&ia, 1, false, None)
        .await
        .unwrap();
    assert!(
        out.reply.lapsed,
        "A's inbox was partly taken over, but its beat did not report the lapse: {:?}",
        out.reply
    );
    // The lapse path: A closes the session's socket, the client resumes (through B).
    cell.drop_session(0).await.unwrap();
    cell.resume(0, 1).await.unwrap();
    cell.advance(0, 1).await.unwrap(); // every consumer reads its inbox again
    let got: Vec<u64> = cell.clients.sessions[0].got.keys().copied().collect();
    assert_eq!(got, vec![0, 1], "{}", cell.clients.summary());
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
}

/// After Redis is wiped (or before an instance's first beat) an instance has no presence and
/// is not listed in `instances`, while its connections re-register through their next
/// message. A peer's script that then drops a message for one of them must not leave the
/// lapse tombstone: nothing the instance had survived the wipe, and a tombstone would make
/// its next beat close every socket of the cell (a wipe under load would reconnect every
/// client). Driven through the scripts: A holds the session, B the node.
#[tokio::test]
async fn a_message_dropped_for_an_instance_not_listed_since_a_wipe_leaves_no_lapse() {
    use common::cell::{Answer, Cell};
    let redis = RedisServer::start().await;
    let mut cell = Cell::new(&redis).await.expect("cell");
    let ia = cell.inst[0].id.clone();
    cell.register(0, 1, 0, 4).await.expect("n0 on B");
    cell.open(0, 0).await.expect("s0 on A");
    cell.submit(0, false, false).await.expect("submit");
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
    // A's presence and listing are gone, as after a wipe that its connections outlived in
    // Redis terms (they re-registered before A's next beat).
    let mut c = redis.client().await;
    let _: () = redis::pipe()
        .del(format!("{PREFIX}instance:{ia}"))
        .zrem(format!("{PREFIX}instances"), &ia)
        .query_async(&mut c)
        .await
        .unwrap();
    // The node holds the job_assign (else `result` does nothing and nothing is dropped).
    assert_eq!(
        cell.clients.nodes["n0"].work.len(),
        1,
        "n0 got no job_assign"
    );
    cell.result(0, 0, Answer::Ok).await.expect("result");
    assert!(
        cell.clients.nodes["n0"].work.is_empty(),
        "the result was not sent"
    );
    // The result for A's session was dropped: nothing waits in A's inbox, nothing reached
    // the session (checked after its consumer read the inbox, as `check` does).
    let inbox: u64 = c.xlen(format!("{PREFIX}inbox:{ia}")).await.unwrap();
    assert_eq!(
        inbox, 0,
        "the result was not dropped: it waits in A's inbox"
    );
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(
        cell.clients.sessions[0].got.is_empty(),
        "the result was not dropped: {}",
        cell.clients.summary()
    );
    let tomb: bool = c.exists(format!("{PREFIX}taken:{ia}")).await.unwrap();
    assert!(
        !tomb,
        "a drop for an unlisted instance left the lapse tombstone"
    );
    let out = cell.inst[0]
        .store
        .instance_beat(&ia, 1, false, None)
        .await
        .unwrap();
    assert!(
        !out.reply.lapsed,
        "A lost nothing it had before the wipe, yet its beat reports a lapse: {:?}",
        out.reply
    );
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
}

/// After Redis is wiped, an instance has no presence, listing or inbox group until its next
/// beat (up to `beat_interval_ms`). A node registering on B and a session opening on A in
/// that time must still reach each other: binding a connection makes its instance present
/// (deliver.lua `present()`), instead of every peer dropping the node's job_assigns and the
/// session's results until the instance beats again. Beats are a minute apart here, so the
/// whole scenario runs before either instance beats after the wipe.
#[tokio::test]
async fn connections_bound_after_a_wipe_are_reachable_before_their_instance_beats_again() {
    let redis = RedisServer::start().await;
    let slow = |c: &mut switchyard::config::Config| {
        c.instance.beat_interval_ms = 60_000;
        c.instance.presence_ttl_ms = 120_000;
    };
    let a = start_tweaked(&redis, slow).await;
    let b = start_tweaked(&redis, slow).await;
    let mut c = redis.client().await;
    // Both have beaten once (the beat runs at start); then Redis loses everything.
    for inst in [&a, &b] {
        let key = format!("{PREFIX}instance:{}", inst.app.instance_id);
        for _ in 0..100 {
            if c.exists::<_, bool>(&key).await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let (mut n, nid) = node_on(&b, None).await;
    let (mut s, sid) = session_on(&a).await;
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
        let j = next_of(&mut n, "job_assign", T)
            .await
            .expect("job_assign through B's inbox before B beat again");
        n.send(&answer(&j, &nid, &format!("r{i}"))).await;
    }
    let got = terminals(&mut s, 3, T).await;
    let idx: Vec<u64> = got
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2], "results through A's inbox");
    invariants::check(&mut c).await;
}

/// Review finding: Redis away for longer than the presence TTL (a stall, a restart, a
/// Sentinel failover) let every presence expire; the first instance to beat afterwards took
/// the others' (empty) inboxes over and left their tombstones, and each of them then closed
/// every socket it held (1012): a fleet-wide reconnect storm after every outage, though no
/// message was lost. Now a beat whose own presence had expired takes nobody over, and a
/// takeover of an empty inbox is no lapse (only a drop after it is). Driven through the
/// scripts, so the order of the beats is the one that used to hurt.
#[tokio::test]
async fn coming_back_from_a_redis_outage_is_no_lapse() {
    use common::cell::{Answer, Cell};
    let redis = RedisServer::start().await;
    let mut cell = Cell::new(&redis).await.expect("cell");
    let (ia, ib) = (cell.inst[0].id.clone(), cell.inst[1].id.clone());
    cell.register(0, 1, 0, 4).await.expect("n0 on B");
    cell.open(0, 0).await.expect("s0 on A");
    let mut c = redis.client().await;
    // Every presence expired while Redis was away; their listings are due.
    let expire_all = redis::pipe()
        .del(format!("{PREFIX}instance:{ia}"))
        .del(format!("{PREFIX}instance:{ib}"))
        .zadd(format!("{PREFIX}instances"), &ia, 1)
        .zadd(format!("{PREFIX}instances"), &ib, 1)
        .clone();
    let _: () = expire_all.query_async(&mut c).await.unwrap();
    // A node (re)registers through A before A beats: present() re-creates A's presence,
    // which must not count as A's own beat (the reviewed takeover came back that way).
    // (it serves no pair: the utterance below still goes to n0, whose answer the test sends)
    cell.register(1, 0, 3, 4).await.expect("n1 on A");
    // Scripts run before anyone beats: the job_assign waits in B's inbox, the result for
    // A's session in A's (both listed), instead of being dropped.
    cell.submit(0, false, false).await.expect("submit");
    let bad = cell.check().await; // B's consumer hands the node its job_assign
    assert!(bad.is_empty(), "{bad:#?}");
    cell.result(0, 0, Answer::Ok).await.expect("result");
    let a = beat(&cell, 0).await;
    assert!(
        a.took_over.is_none() && !a.more,
        "A's own presence had expired: {a:?}"
    );
    let b = beat(&cell, 1).await;
    assert!(!b.lapsed, "B lost nothing: {b:?}");
    let a = beat(&cell, 0).await;
    assert!(!a.lapsed && a.took_over.is_none(), "{a:?}");
    let bad = cell.check().await; // A's consumer delivers the result it kept
    assert!(bad.is_empty(), "{bad:#?}");
    let got: Vec<u64> = cell.clients.sessions[0].got.keys().copied().collect();
    assert_eq!(got, vec![0], "{}", cell.clients.summary());

    // One instance really gone (B), its inbox empty: A takes it over. That alone cost B
    // nothing, so if B was only stalled its next beat is no lapse.
    let _: () = redis::pipe()
        .del(format!("{PREFIX}instance:{ib}"))
        .zadd(format!("{PREFIX}instances"), &ib, 1)
        .query_async(&mut c)
        .await
        .unwrap();
    let a = beat(&cell, 0).await;
    assert_eq!(a.took_over.as_deref(), Some(ib.as_str()), "{a:?}");
    let b = beat(&cell, 1).await;
    assert!(!b.lapsed, "an empty inbox taken over lost nothing: {b:?}");
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
}

/// One beat of the simulated instance in `slot`, its reply.
async fn beat(cell: &common::cell::Cell, slot: usize) -> switchyard::store::instances::BeatReply {
    let i = &cell.inst[slot];
    i.store
        .instance_beat(&i.id, 1, false, None)
        .await
        .expect("beat")
        .reply
}

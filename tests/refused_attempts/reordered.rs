//! Two accepted takeovers of one node id (or two resumes of one session) on one instance
//! whose script replies come back in the opposite order to their commits: the binding left
//! live must be the connection Redis names (the later commit), and a `job_assign` Redis
//! addresses to it must reach it.
//!
//! The reply order cannot be forced through two real sockets (both calls share the
//! instance's Redis connections), so the two takeovers are made here the way
//! `node_register` makes them — bind, the real `register` script, then the outcome — on the
//! running instance's own connection map, with the accepts in reverse commit order. The
//! node that held the id and the session whose utterance is dispatched are real WebSocket
//! clients; the dispatch is the instance's own.

use super::*;
use switchyard::capabilities::Capabilities;
use switchyard::gateway::{Accepted, Kind, LocalConn, Outbound, settle_takeover};
use switchyard::protocol::node::NodeRegister;
use switchyard::routing::deliver;
use switchyard::store::instances::ResumeReply;
use switchyard::store::nodes::{NodeClaim, RegisterReply};
use tokio::sync::mpsc;

/// A connection of the test on the instance's map: its token and the receiving end of
/// its writer.
fn local(inst: &Running, name: &str) -> (LocalConn, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(64);
    let conn = LocalConn {
        token: format!("{}/takeover-{name}", inst.app.instance_id),
        tx,
        cell: inst.app.cells.default_cell().clone(),
        missing: Default::default(),
    };
    (conn, rx)
}

/// The first text message on `rx` within `T` whose type is `kind`.
async fn text_of(rx: &mut mpsc::Receiver<Outbound>, kind: &str) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        let text = match m {
            Outbound::Text(t) | Outbound::First(t) | Outbound::Ordered(_, t) => t,
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).ok()?;
        if v["type"] == kind {
            return Some(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_takeovers_accepted_in_reverse_commit_order_leave_the_later_one_live() {
    reverse_takeovers(false).await;
}

/// The same when Redis lost the first commit (a failover without it: the node record's
/// connection and epoch as they were before): the second commit's epoch must still be the
/// higher one. Before the epoch had the clock as a floor, both commits got the same epoch
/// and the reply that arrived last won.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_after_a_lost_commit_still_orders_after_it() {
    reverse_takeovers(true).await;
}

/// Two takeovers B, C of a node id, committed in that order and accepted in reverse;
/// `lose_b`: Redis loses B's commit before C's.
async fn reverse_takeovers(lose_b: bool) {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let (app, cell) = (&inst.app, inst.app.cells.default_cell().clone());
    let register: NodeRegister =
        serde_json::from_value(fixture("node_register_first")).expect("node_register");
    let caps = Capabilities::from_register(&register).expect("capabilities");
    let extra = [("capacity", "4".to_string()), ("supports_ack", "0".into())];

    // B and C take the id over, both bound (pending) before their scripts run; Redis
    // commits B's register first, then C's.
    let (b, _b_rx) = local(&inst, "b");
    let (cc, mut c_rx) = local(&inst, "c");
    let (bt, ct) = (b.token.clone(), cc.token.clone());
    let floor = app.conns.bind(Kind::Node, &nid, b);
    assert_eq!(app.conns.bind(Kind::Node, &nid, cc), floor);
    let mut epochs = Vec::new();
    let key = format!("{}node:{nid}", invariants::PREFIX);
    let fields = ["conn", "owner", "epoch"];
    let before: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&key)
        .arg(&fields)
        .query_async(&mut c)
        .await
        .expect("HMGET");
    for t in [&bt, &ct] {
        if lose_b && t == &ct {
            let mut lost = redis::cmd("HSET");
            lost.arg(&key);
            for (f, v) in fields.iter().zip(&before) {
                lost.arg(f).arg(v.as_deref().unwrap_or(""));
            }
            let _: () = lost.query_async(&mut c).await.expect("HSET");
            // A failover takes far longer than a millisecond: the clock floor orders the
            // next commit after the lost one only from the next millisecond on (a run
            // without this pause once saw both in the same one).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let out = cell
            .store
            .register(&nid, NodeClaim::Replace, t, &caps, &extra, floor, None)
            .await
            .expect("register");
        let RegisterReply::Ok { epoch, .. } = out.reply else {
            panic!("takeover refused: {:?}", out.reply);
        };
        epochs.push(epoch);
    }
    let owner: String = c.hget(format!("{PREFIX}node:{nid}"), "conn").await.unwrap();
    assert_eq!(owner, ct, "Redis names the later commit");

    // The replies come back the other way round: C's outcome first, then B's.
    assert!(
        epochs[0] < epochs[1],
        "epochs follow commit order: {epochs:?}"
    );
    let c_won = app
        .conns
        .accept(Kind::Node, cell.name(), &nid, &ct, epochs[1], None);
    assert!(matches!(c_won, Accepted::Live(_)), "{c_won:?}");
    let b_late = app
        .conns
        .accept(Kind::Node, cell.name(), &nid, &bt, epochs[0], None);
    assert!(
        matches!(b_late, Accepted::Superseded),
        "B's outcome is superseded: {b_late:?}"
    );

    let live = app.conns.get(Kind::Node, cell.name(), &nid, None);
    assert_eq!(
        live.map(|l| l.token).as_deref(),
        Some(ct.as_str()),
        "the live binding is the connection Redis names (epochs {epochs:?})"
    );
    // What Redis addresses to its owner reaches it: the session's utterance is dispatched
    // to the node's connection C.
    s.send(&utterance(&sid, 0)).await;
    let a = text_of(&mut c_rx, "job_assign").await;
    assert!(
        a.is_some(),
        "the job_assign for the node reaches C, the connection Redis names"
    );
    invariants::check(&mut c).await;
}

/// The same for two resumes of one session: the later commit's connection stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_resumes_accepted_in_reverse_commit_order_leave_the_later_one_live() {
    use sha2::{Digest, Sha256};
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_s, ack) = open_session_ack(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().expect("session_id").to_string();
    let proof = ack["resume_token"].as_str().expect("resume_token");
    let hash: String = Sha256::digest(proof.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (app, cell) = (&inst.app, inst.app.cells.default_cell().clone());
    let (b, _b_rx) = local(&inst, "b");
    let (cc, _c_rx) = local(&inst, "c");
    let (bt, ct) = (b.token.clone(), cc.token.clone());
    let floor = app.conns.bind(Kind::Session, &sid, b);
    app.conns.bind(Kind::Session, &sid, cc);
    let mut epochs = Vec::new();
    for t in [&bt, &ct] {
        let out = cell
            .store
            .session_resume(&sid, t, -1, &hash, None, floor)
            .await
            .expect("session_resume");
        let ResumeReply::Ok { epoch, .. } = out.reply else {
            panic!("resume refused: {:?}", out.reply);
        };
        epochs.push(epoch);
    }
    assert!(
        epochs[0] < epochs[1],
        "epochs follow commit order: {epochs:?}"
    );
    let owner: String = c
        .hget(format!("{PREFIX}session:{sid}"), "conn")
        .await
        .unwrap();
    assert_eq!(owner, ct, "Redis names the later commit");
    let c_won = app
        .conns
        .accept(Kind::Session, cell.name(), &sid, &ct, epochs[1], None);
    assert!(
        matches!(c_won, Accepted::Live(ref r) if r.len() == 1),
        "{c_won:?}"
    );
    let b_late = app
        .conns
        .accept(Kind::Session, cell.name(), &sid, &bt, epochs[0], None);
    assert!(matches!(b_late, Accepted::Superseded), "{b_late:?}");
    let live = app.conns.get(Kind::Session, cell.name(), &sid, None);
    assert_eq!(live.map(|l| l.token).as_deref(), Some(ct.as_str()));
    assert!(
        app.conns
            .get(Kind::Session, cell.name(), &sid, Some(&bt))
            .is_none()
    );
    invariants::check(&mut c).await;
}

/// Review finding: a registration overtaken by a later one had its own script's messages
/// delivered to its own binding, already removed: a queued job the script handed the node
/// (DISPATCHED to it, addressed to that connection) reached nobody and waited for its
/// deadline. It now goes to the live binding, the node's connection in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_handed_to_an_overtaken_registration_reaches_the_live_one() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut s, sid) = session_on(&inst).await;
    let (app, cell) = (&inst.app, inst.app.cells.default_cell().clone());
    let register: NodeRegister =
        serde_json::from_value(fixture("node_register_first")).expect("node_register");
    let caps = Capabilities::from_register(&register).expect("capabilities");
    let nid = "node-0000BEEF".to_string();
    let takeover = async |conn: LocalConn, capacity: &str| {
        let token = conn.token.clone();
        let floor = app.conns.bind(Kind::Node, &nid, conn);
        let extra = [
            ("capacity", capacity.to_string()),
            ("supports_ack", "0".into()),
        ];
        let out = cell
            .store
            .register(&nid, NodeClaim::Replace, &token, &caps, &extra, floor, None)
            .await
            .expect("register");
        let (reply, assign) = out.split();
        let RegisterReply::Ok { epoch, .. } = reply else {
            panic!("takeover refused: {reply:?}");
        };
        (token, epoch, assign)
    };

    // A holds the node with room for one job: utterance 0 takes it, utterance 1 waits in
    // the pool's queue.
    let (a_conn, mut a_rx) = local(&inst, "a");
    let (at, epoch, assign) = takeover(a_conn, "1").await;
    let (_, assign) = settle_takeover(app, &cell, &nid, &at, epoch, assign).expect("A is live");
    deliver(app, &cell, assign);
    s.send(&utterance(&sid, 0)).await;
    assert!(
        text_of(&mut a_rx, "job_assign").await.is_some(),
        "A has job 0"
    );
    s.send(&utterance(&sid, 1)).await;
    common::topology::until(T, "utterance 1 to wait in the queue", || {
        let mut c = c.clone();
        let sid = sid.clone();
        async move {
            let job: Option<String> = c
                .hget(format!("{PREFIX}session:{sid}:jobs"), 1)
                .await
                .unwrap_or_default();
            let Some(job) = job else { return false };
            let state: Option<String> = c
                .hget(format!("{PREFIX}job:{job}"), "state")
                .await
                .unwrap_or_default();
            state.as_deref() == Some("QUEUED")
        }
    })
    .await;

    // B takes the node over with more room: its script hands it the queued job 1. C takes
    // it over after B; C's outcome is settled first, then B's.
    let (b_conn, _b_rx) = local(&inst, "b");
    let (c_conn, mut c_rx) = local(&inst, "c");
    let (bt, b_epoch, b_assign) = takeover(b_conn, "4").await;
    assert!(
        b_assign
            .out
            .iter()
            .any(|d| d.msg.contains("job_assign") && d.conn.as_deref() == Some(&bt)),
        "B's script handed it the queued job: {:?}",
        b_assign.out
    );
    let (ct, c_epoch, c_assign) = takeover(c_conn, "4").await;
    let (_, c_assign) =
        settle_takeover(app, &cell, &nid, &ct, c_epoch, c_assign).expect("C is live");
    deliver(app, &cell, c_assign);
    assert!(
        settle_takeover(app, &cell, &nid, &bt, b_epoch, b_assign).is_none(),
        "B is overtaken"
    );
    let job = text_of(&mut c_rx, "job_assign").await;
    assert_eq!(
        job.map(|j| j["utterance_index"].clone()),
        Some(serde_json::json!(1)),
        "the job B's script handed out reaches C, the node's connection"
    );
    invariants::check(&mut c).await;
}

//! A Redis Cluster whose slot of a live cell is being moved (MIGRATING / IMPORTING): the
//! cell refuses work until the move ends, and no script stops half-way.

use super::*;

/// `CLUSTER MYID` of the node on `port`.
async fn node_id(port: u16) -> String {
    let mut c = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("cluster node");
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut c)
        .await
        .expect("myid")
}

/// `CLUSTER SETSLOT slot <args...>` on the node on `port`.
async fn setslot(port: u16, slot: u16, args: &[&str]) {
    let mut c = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("cluster node");
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot);
    for a in args {
        cmd.arg(*a);
    }
    let _: () = cmd.query_async(&mut c).await.expect("setslot");
}

/// Review finding: while a cell's slot is MIGRATING, a script fails at the first key it
/// touches that is not on the node, and Redis keeps the writes made before: a `job_result`
/// released the node's reservation and finished the job, then failed at the session's
/// result log, so the session never got its result and the job's terminal state had no
/// message (DESIGN §1). Every script now touches a key that never exists first (ctx.lua),
/// so in a moving slot it fails before any write: the node is told
/// SCHEDULER_DEPENDENCY_DOWN, and the job times out once the move is over.
#[tokio::test]
async fn a_cell_whose_slot_is_moving_refuses_work_without_partial_writes() {
    let cluster = Cluster::start().await;
    let a = start_with(cfg(RedisMode::Cluster, cluster.urls(), |_| {})).await;
    let mut n = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) =
        open_session(&ws_url(&a, "/ws/session"), fixture("session_init_one_way")).await;
    s.send(&utterance(&sid, 0)).await;
    let j = next_of(&mut n, "job_assign", T).await.expect("job_assign");

    let slot = cluster.slot(&format!("{PREFIX}x")).await;
    let src = cluster.primary_of(slot).await.expect("slot owner");
    let dst = cluster
        .slot_map()
        .await
        .into_keys()
        .find(|p| *p != src)
        .expect("another primary");
    let (src_id, dst_id) = (node_id(src).await, node_id(dst).await);
    setslot(dst, slot, &["IMPORTING", &src_id]).await;
    setslot(src, slot, &["MIGRATING", &dst_id]).await;

    n.send(&answer(&j, &nid, "during the move")).await;
    let e = next_of(&mut n, "error", T).await.expect("the node is told");
    assert_eq!(e["code"], "SCHEDULER_DEPENDENCY_DOWN", "{e}");
    let mut direct = connect(&format!("redis://127.0.0.1:{src}"))
        .await
        .expect("cell primary");
    let job: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!(
            "{PREFIX}job:{}",
            j["job_id"].as_str().expect("job_id")
        ))
        .query_async(&mut direct)
        .await
        .expect("job");
    assert_eq!(job["state"], "DISPATCHED", "nothing written: {job:?}");
    let reserved: String = redis::cmd("HGET")
        .arg(format!("{PREFIX}node:{nid}"))
        .arg("reserved")
        .query_async(&mut direct)
        .await
        .expect("reserved");
    assert_eq!(reserved, "1", "the reservation is still the job's");

    // The move is called off: the sweep times the job out (its answer was refused) and
    // the session gets the utterance's one terminal message (the only node already had it,
    // so it is not tried again).
    setslot(src, slot, &["STABLE"]).await;
    setslot(dst, slot, &["STABLE"]).await;
    invariants::check(&mut direct).await;
    let got = terminals(&mut s, 1, Duration::from_secs(15)).await;
    assert_eq!(got[0]["utterance_index"], 0, "{got:?}");
    assert_eq!(got[0]["type"], "error", "{got:?}");
    invariants::check(&mut direct).await;
}

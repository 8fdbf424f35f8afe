//! A terminal message the connection's writer gave up waiting for (its sequence number
//! never came within `session.order_gap_ms`, with `session.on_gap = "skip"`): nothing else
//! tells the instance it is missing, so the writer's own skip starts the read of the
//! result log, and the message is written once, late.

use super::*;

/// Two results committed behind the connection's back, as a script whose reply was lost
/// would leave them: index 1 (number 2), whose message never reaches the writer, and
/// index 2 (number 3), whose message comes through the instance's inbox. The writer holds
/// number 3 for the gap, gives up, writes it, and the log gives it index 1.
#[tokio::test]
async fn a_message_the_writer_gave_up_waiting_for_is_read_back_from_the_log() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.session.order_gap_ms = 300).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let j = n.recv_type("job_assign").await;
    n.send(&answer(&j, &nid, "r0")).await;
    assert_eq!(terminals(&mut s, 1, T).await[0]["utterance_index"], 0);

    let sk = format!("{PREFIX}session:{sid}");
    let (conn, out_seq): (String, u64) = redis::cmd("HMGET")
        .arg(&sk)
        .arg("conn")
        .arg("out_seq")
        .query_async::<(String, u64)>(&mut c)
        .await
        .unwrap();
    assert_eq!(out_seq, 1);
    let msg = |i: u64| {
        json!({"type": "translation_result", "session_id": sid, "utterance_index": i,
               "text_asr": format!("a{i}"), "text_translated": format!("b{i}")})
        .to_string()
    };
    let now = redis_now(&mut c).await;
    let env = session_envelope(&sid, &conn, &msg(2), 3);
    let mut p = redis::pipe();
    p.atomic()
        .hset_multiple(format!("{sk}:results"), &[(1, msg(1)), (2, msg(2))])
        .ignore()
        .zadd_multiple(format!("{sk}:rtime"), &[(now, 1), (now, 2)])
        .ignore()
        .hset_multiple(&sk, &[("next_deliver", 3), ("out_seq", 3)])
        .ignore()
        .cmd("XADD")
        .arg(format!("{PREFIX}inbox:{}", inst.app.instance_id))
        .arg("*")
        .arg("env")
        .arg(env)
        .ignore();
    let () = p.query_async(&mut c).await.unwrap();

    let got: Vec<u64> = terminals(&mut s, 2, T)
        .await
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [2, 1], "the held one after the gap, then the log's");
    s.expect_silence(Duration::from_millis(800)).await;
    invariants::check(&mut c).await;
}

//! A turn's parts on one node: a node may merge a turn's parts and answer only the last
//! (PROTOCOL: "a node may send no result for a job it merged into a later one; the job
//! then ends by timeout rules").

use super::*;

/// A max-duration cut and the manual cut that ends the turn, both on one node of two,
/// which answers only the second (it merged the first into it). Returns the node that had
/// them (with its id), the other node, the session, and the two assigns.
async fn a_turn_answered_whole(
    inst: &switchyard::server::Running,
) -> (
    (WsClient, String),
    WsClient,
    WsClient,
    [serde_json::Value; 2],
) {
    let (mut a, aid) = node(inst, |_| {}).await;
    let (mut b, bid) = node(inst, |_| {}).await;
    let (mut s, sid) = session(inst).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let (first, other, j0) = tokio::select! {
        v = assign(&mut a) => ((a, aid), b, v),
        v = assign(&mut b) => ((b, bid), a, v),
    };
    let (mut first, other) = (first, other);
    assert_eq!(j0["is_max_duration_triggered"], true);
    let mut fin = for_session("audio_chunk_final_empty", &sid);
    fin["payload"] = json!(B64.encode([1u8; 30]));
    s.send(&fin).await;
    let j1 = assign(&mut first.0).await;
    assert_eq!(j1["turn_id"], j0["turn_id"]);
    first.0.send(&answer(&j1, &first.1, "whole phrase")).await;
    (first, other, s, [j0, j1])
}

/// What the session and Redis show after the first part ended merged: an empty result for
/// it, the whole phrase for the second, no attempt on the other node.
async fn ended_merged(
    c: &mut redis::aio::MultiplexedConnection,
    s: &mut WsClient,
    other: &mut WsClient,
    j0: &serde_json::Value,
) {
    let got = terminals(s, 2, T).await;
    assert_eq!(got[0]["utterance_index"], 0, "{got:?}");
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    assert_eq!(got[0]["text_asr"], "", "{got:?}");
    assert_eq!(got[0]["extra"]["reason"], "NO_TEXT_ASSIGNED", "{got:?}");
    assert_eq!(got[0]["job_id"], j0["job_id"]);
    assert_eq!(got[1]["utterance_index"], 1);
    assert_eq!(got[1]["text_translated"], "whole phrase", "{got:?}");
    assert!(
        next_of(other, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "the merged part ran again on the other node"
    );
    let jk = format!("{PREFIX}job:{}", j0["job_id"].as_str().expect("job id"));
    let (state, merged): (String, String) = redis::cmd("HMGET")
        .arg(&jk)
        .arg("state")
        .arg("merged")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!((state.as_str(), merged.as_str()), ("FINISHED", "1"));
    invariants::check(c).await;
}

fn streaming(c: &mut switchyard::config::Config) {
    c.session.max_duration_ms = 200;
    c.session.min_cut_ms = 0;
    c.session.reorder_window_ms = 5_000;
}

/// At the first part's deadline it is not failed over (run again alone on another node: a
/// second, partial translation, or JOB_TIMEOUT ~90 s later after three attempts) but ends
/// with an empty translation_result (`NO_TEXT_ASSIGNED`), as the node's own empty result
/// would have ended it (protocol audit).
#[tokio::test]
async fn a_turn_part_merged_into_a_later_one_ends_empty_at_its_deadline() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        streaming(c);
        c.jobs.run_timeout_ms = 600;
    })
    .await;
    let mut c = redis.client().await;
    let ((mut first, _), mut other, mut s, [j0, _]) = a_turn_answered_whole(&inst).await;
    ended_merged(&mut c, &mut s, &mut other, &j0).await;
    // the node is told, as at any deadline (one that did not merge it stops working on it)
    let cancel = first.recv_type("job_cancel").await;
    assert_eq!(cancel["job_id"], j0["job_id"], "{cancel}");
}

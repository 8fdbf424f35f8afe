//! The services a job needs and the marks a node's MODEL_NOT_AVAILABLE leaves: a job needs
//! exactly the services its `pipeline` uses (`use_semantic` / `use_tone` included, PROTOCOL.md
//! "Pool rule"), and the `down:<svc>` marks on a node's record are bounded whatever service
//! ids the node sends (DESIGN §1.7).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::actors::{open_session, terminals, utterance};
use crate::common::invariants;
use crate::common::*;

const T: Duration = Duration::from_secs(5);

/// The lingua registration with `semantic` ready or not.
fn with_semantic(ready: bool) -> Value {
    let mut f = fixture("node_register_first");
    for c in f["capability_by_type"]
        .as_array_mut()
        .expect("capability_by_type")
    {
        if c["type"] == "semantic" {
            c["ready"] = json!(ready);
        }
    }
    f
}

fn semantic_utterance(sid: &str, idx: u64) -> Value {
    let mut u = utterance(sid, idx);
    u["pipeline"] =
        json!({"use_asr": true, "use_nmt": true, "use_tts": true, "use_semantic": true});
    u
}

/// Audit finding: `use_semantic` was forwarded to the node but never required, so a job
/// that asked for semantic repair ran on a node whose semantic service was not ready.
#[tokio::test]
async fn a_job_needs_the_semantic_service_only_when_its_pipeline_uses_it() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut plain = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    plain.register_id(with_semantic(false), None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;

    // No node has semantic ready: refused at once, nothing sent to the node.
    s.send(&semantic_utterance(&sid, 0)).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "error", "{got:?}");
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE", "{got:?}");
    // The same pipeline without semantic runs on it.
    s.send(&utterance(&sid, 1)).await;
    let a = plain.recv_type("job_assign").await;
    assert_eq!(a["utterance_index"], 1);

    // A node with semantic ready takes the jobs that need it; the other never sees one.
    let mut repair = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    repair.register_id(with_semantic(true), None).await;
    for idx in 2..6 {
        s.send(&semantic_utterance(&sid, idx)).await;
        let a = repair.recv_type("job_assign").await;
        assert_eq!(a["utterance_index"], idx);
        assert_eq!(a["pipeline"]["use_semantic"], true, "{a}");
    }
    plain.expect_silence(Duration::from_millis(200)).await;
    invariants::check(&mut c).await;
}

/// Audit finding: the service type of a MODEL_NOT_AVAILABLE fell back to the node's own
/// `service_id`, any string up to a frame's size, and `down:<that>` was written to the node's
/// record and never deleted: a node could grow its record without bound.
#[tokio::test]
async fn a_nodes_service_ids_mark_only_known_types() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.model_unavailable_ms = 1).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    let long = "x".repeat(10_000);
    let ids = ["custom-aaaa", long.as_str(), "Semantic-Repair-2"];
    for (idx, service) in ids.iter().enumerate() {
        s.send(&utterance(&sid, idx as u64)).await;
        let a = n.recv_type("job_assign").await;
        let mut mna = fixture("job_result_model_not_available");
        for k in ["job_id", "attempt_id", "session_id", "utterance_index"] {
            mna[k] = a[k].clone();
        }
        mna["node_id"] = json!(nid);
        mna["error"]["details"]["service_id"] = json!(service);
        n.send(&mna).await;
        // one node: the failover finds none
        let got = terminals(&mut s, 1, T).await;
        assert_eq!(got[0]["type"], "error", "{got:?}");
        tokio::time::sleep(Duration::from_millis(5)).await; // the 1 ms mark has passed
    }
    let h: HashMap<String, String> = node_hash(&mut c, &nid).await;
    // (names cut to 40 bytes: a failure would otherwise print the 10,000-byte one)
    let mut marks: Vec<String> = h
        .keys()
        .filter(|k| k.starts_with("down:"))
        .map(|k| k.chars().take(40).collect())
        .collect();
    marks.sort();
    assert_eq!(marks, ["down:semantic"]);
    // only the semantic mark counts toward the node's marks of the minute
    assert_eq!(
        h.get("mna_count").map(String::as_str),
        Some("1"),
        "mna_count"
    );
    invariants::check(&mut c).await;
}

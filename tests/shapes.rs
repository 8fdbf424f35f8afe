//! Strict shapes, tolerant of the unknown, against a real redis-server (issue 9 row 7): a
//! known field of the wrong JSON type gets INVALID_MESSAGE naming the field and changes
//! nothing in Redis; unknown fields and nulls stay accepted; scripts refuse non-numeric
//! arguments before writing anything.

mod common;

use std::time::Duration;

use common::invariants::PREFIX;
use common::*;
use redis::AsyncCommands;
use serde_json::json;

type Conn = redis::aio::MultiplexedConnection;

/// The next `error` must be INVALID_MESSAGE and name `field`.
async fn expect_invalid(ws: &mut WsClient, field: &str) {
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("`{field}`")),
        "{field} not named: {msg}"
    );
}

#[tokio::test]
async fn register_with_array_language_capabilities_is_refused_and_stores_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut frame = fixture("node_register_first");
    frame["node_id"] = json!("node-strict01");
    frame["language_capabilities"] = json!([["zh", "en"], ["zh", "en"], ["zh", "en"]]);
    node.send(&frame).await;
    expect_invalid(&mut node, "language_capabilities").await;
    node.expect_silence(Duration::from_millis(300)).await;
    assert!(node_keys(&mut c).await.is_empty(), "a node was stored");
    // The same frame with the object shape registers.
    frame["language_capabilities"] =
        fixture("node_register_first")["language_capabilities"].clone();
    let id = node.register_id(frame, Some("node-strict01")).await;
    assert_eq!(id, "node-strict01");
    common::invariants::check(&mut c).await;
}

/// A node's three language lists hold at most 192 languages together (every version's
/// rule, so 99 ASR languages with a few others still register) and put it in at most 4,160
/// pools (a 96 × 96 matrix, 9,312 pools, failed its scripts after their writes). More is
/// refused before any script runs, and so is such a heartbeat.
#[tokio::test]
async fn register_beyond_192_languages_or_4160_pools_is_refused_and_stores_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let langs: Vec<String> = (0..99).map(|i| format!("l{i:02}")).collect();
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut frame = fixture("node_register_first");
    frame["node_id"] = json!("node-wide0001");
    frame["language_capabilities"] = json!({"asr_languages": &langs[..97],
        "semantic_languages": &langs[..96], "tts_languages": []});
    node.send(&frame).await;
    let e = node.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_CAPABILITY_SCHEMA", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 192 languages")),
        "{e}"
    );
    node.expect_silence(Duration::from_millis(300)).await;
    assert!(node_keys(&mut c).await.is_empty(), "a node was stored");
    // 96 × 96 is within 192 languages, not within 4,160 pools.
    let l96 = &langs[..96];
    frame["language_capabilities"] =
        json!({"asr_languages": l96, "semantic_languages": l96, "tts_languages": []});
    node.send(&frame).await;
    let e = node.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_CAPABILITY_SCHEMA", "{e}");
    assert!(node_keys(&mut c).await.is_empty(), "a node was stored");
    // 64 in each list registers: 64 × 64 pairs and 64 auto pools.
    let l64 = &langs[..64];
    frame["language_capabilities"] =
        json!({"asr_languages": l64, "semantic_languages": l64, "tts_languages": l64});
    let id = node.register_id(frame, Some("node-wide0001")).await;
    let pools_key = format!("{PREFIX}node:{id}:pools");
    let pools: u64 = c.scard(&pools_key).await.expect("scard");
    assert_eq!(pools, 64 * 64 + 64);
    // A heartbeat with 99 ASR languages and a few others is accepted (every version did)...
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["language_capabilities"] = json!({"asr_languages": &langs[..99],
        "semantic_languages": &langs[..3], "tts_languages": []});
    node.send(&hb).await;
    node.expect_silence(Duration::from_millis(300)).await;
    // (applied when its script has run: waited for, not assumed within the 300 ms)
    eventually(Duration::from_secs(5), "the heartbeat's pools", || {
        let (mut c, k) = (c.clone(), pools_key.clone());
        async move { (c.scard::<_, u64>(&k).await.ok()? == 99 * 3 + 3).then_some(()) }
    })
    .await;
    let pools: u64 = 99 * 3 + 3;
    // ... one with 193 languages is refused and changes nothing.
    hb["language_capabilities"] = json!({"asr_languages": langs,
        "semantic_languages": l96, "tts_languages": []});
    node.send(&hb).await;
    let e = node.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_CAPABILITY_SCHEMA", "{e}");
    let after: u64 = c.scard(&pools_key).await.expect("scard");
    assert_eq!(after, pools, "the refused heartbeat moved the node");
    common::invariants::check(&mut c).await;
}

#[tokio::test]
async fn heartbeat_with_array_resource_usage_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    node.heartbeat(&id, None).await;
    let key = format!("{PREFIX}node:{id}");
    eventually(Duration::from_secs(5), "cpu from the heartbeat", || {
        let (mut c, key) = (c.clone(), key.clone());
        async move {
            let cpu: Option<String> = c.hget(&key, "cpu").await.ok()?;
            (cpu.as_deref() == Some("23.5")).then_some(())
        }
    })
    .await;
    let before: std::collections::HashMap<String, String> = c.hgetall(&key).await.expect("hash");
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["resource_usage"] = json!([91.5, 12.0]);
    node.send(&hb).await;
    expect_invalid(&mut node, "resource_usage").await;
    // string for a number, one level down
    hb["resource_usage"] = json!({"cpu_percent": "91.5"});
    node.send(&hb).await;
    expect_invalid(&mut node, "resource_usage.cpu_percent").await;
    let after: std::collections::HashMap<String, String> = c.hgetall(&key).await.expect("hash");
    for field in ["cpu", "capsig"] {
        assert!(
            before.contains_key(field),
            "{field} is a field of the record: {before:?}"
        );
    }
    for field in ["cpu", "mem", "gpu", "gpu_mem", "capsig"] {
        assert_eq!(before.get(field), after.get(field), "{field} changed");
    }
    // unknown fields and nulls stay accepted
    hb["resource_usage"] = json!({"cpu_percent": 50.0, "brand_new": [1, 2]});
    hb["installed_models"] = json!(null);
    hb["something_else"] = json!({"x": [1]});
    node.send(&hb).await;
    eventually(
        Duration::from_secs(5),
        "cpu from the tolerant heartbeat",
        || {
            let (mut c, key) = (c.clone(), key.clone());
            async move {
                let cpu: Option<String> = c.hget(&key, "cpu").await.ok()?;
                (cpu.as_deref() == Some("50.0")).then_some(())
            }
        },
    )
    .await;
    common::invariants::check(&mut c).await;
}

#[tokio::test]
async fn session_init_with_a_wrong_typed_field_is_refused_and_opens_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let mut init = fixture("session_init_two_way");
    init["src_lang"] = json!(["zh"]);
    s.send(&init).await;
    expect_invalid(&mut s, "src_lang").await;
    let mut init = fixture("session_init_two_way");
    init["auto_langs"] = json!({"zh": true});
    s.send(&init).await;
    expect_invalid(&mut s, "auto_langs").await;
    let sessions: Vec<String> = c.keys(format!("{PREFIX}session:*")).await.expect("keys");
    assert!(sessions.is_empty(), "{sessions:?}");
    common::invariants::check(&mut c).await;
}

/// Call `script` with the instance's context arguments followed by `rest`.
async fn call_raw(
    inst: &switchyard::server::Running,
    c: &mut Conn,
    script: switchyard::store::scripts::Script,
    keys: &[String],
    rest: &[&[u8]],
) -> Result<redis::Value, redis::RedisError> {
    let scripts = switchyard::store::scripts::Scripts::new();
    let ctx = inst.app.cells.default_cell().store.args().into_inner();
    let args = ctx.iter().map(Vec::as_slice).chain(rest.iter().copied());
    scripts.fcall(script, keys, args).query_async(c).await
}

/// Open session `sid` (connection `conn-1`) by calling session_open itself; its key.
async fn open_raw(inst: &switchyard::server::Running, c: &mut Conn, sid: &str) -> String {
    let sk = inst.app.cells.default_cell().store.keys.session(sid);
    let open: [&[u8]; 7] = [sid.as_bytes(), b"1", b"conn-1", b"nonce", b"", b"0", b"0"];
    let script = switchyard::store::scripts::Script::SessionOpen;
    call_raw(inst, c, script, std::slice::from_ref(&sk), &open)
        .await
        .expect("session opens");
    sk
}

#[tokio::test]
async fn scripts_refuse_non_numeric_arguments_before_writing_anything() {
    use switchyard::store::scripts::Script;
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let store = &inst.app.cells.default_cell().store;
    let (sk, ak) = (
        store.keys.session("s-lua"),
        store.keys.session_audio("s-lua"),
    );

    // A field count that is not a number: no session record.
    let e = call_raw(
        &inst,
        &mut c,
        Script::SessionOpen,
        std::slice::from_ref(&sk),
        &[
            b"s-lua", b"1", b"conn-1", b"nonce", b"", b"0", b"two", b"a", b"b",
        ],
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("bad argument ARGV[11]"), "{e}");
    let exists: bool = c.exists(&sk).await.expect("exists");
    assert!(!exists, "session written despite the bad argument");
    // A count beyond the arguments given is refused too.
    let e = call_raw(
        &inst,
        &mut c,
        Script::SessionOpen,
        std::slice::from_ref(&sk),
        &[
            b"s-lua", b"1", b"conn-1", b"nonce", b"", b"0", b"5", b"a", b"b",
        ],
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("field pairs"), "{e}");

    // With a real session, an audio chunk whose duration is "NaN" appends nothing.
    open_raw(&inst, &mut c, "s-lua").await;
    let due = store.keys.due("audio");
    for bad in [&b"NaN"[..], b"inf", b"", b"-5", b"1.5"] {
        let e = call_raw(
            &inst,
            &mut c,
            Script::AudioAppend,
            &[sk.clone(), ak.clone(), due.clone()],
            &[b"s-lua", b"conn-1", b"opus-bytes", b"0", bad],
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains("duration ms"), "{e}");
    }
    // nor does one whose client_timestamp_ms is not a time (kept as text, a cut's arithmetic
    // read it after the buffer was gone: the audio was lost, no job made)
    for bad in [&b"soon"[..], b"-1", b"1e300"] {
        let e = call_raw(
            &inst,
            &mut c,
            Script::AudioAppend,
            &[sk.clone(), ak.clone(), due.clone()],
            &[b"s-lua", b"conn-1", b"opus-bytes", b"1", b"300", bad, b"0"],
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains("client_timestamp_ms"), "{e}");
    }
    let exists: bool = c.exists(&ak).await.expect("exists");
    assert!(
        !exists,
        "audio appended despite the bad duration or timestamp"
    );
    let buf: Option<String> = c.hget(&sk, "buf_bytes").await.expect("hget");
    assert_eq!(buf.as_deref(), Some("0"));
}

#[tokio::test]
async fn a_submit_whose_staged_audio_is_missing_fails_before_writing_anything() {
    use switchyard::store::scripts::Script;
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let store = &inst.app.cells.default_cell().store;
    let sk = open_raw(&inst, &mut c, "s-stage").await;
    let before: std::collections::BTreeMap<String, String> = c.hgetall(&sk).await.expect("hgetall");
    let keys_before: Vec<String> = c.keys(format!("{PREFIX}*")).await.expect("keys");

    // KEYS[2] names a staged key the instance never wrote (it expired, or its SET was lost).
    let stage = store.keys.staged_audio("conn-1", "s-stage", 0);
    let e = call_raw(
        &inst,
        &mut c,
        Script::Submit,
        &[sk.clone(), stage.clone()],
        &[
            b"s-stage",
            b"conn-1",
            b"0",
            b"{}",
            b"",
            b"pub:zh:en",
            b"asr,nmt",
            b"zh>en",
            b"0af7651916cd43dd8448eb211c80319c",
        ],
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("staged audio missing"), "{e}");
    let after: std::collections::BTreeMap<String, String> = c.hgetall(&sk).await.expect("hgetall");
    assert_eq!(before, after, "the session record changed");
    let mut keys_after: Vec<String> = c.keys(format!("{PREFIX}*")).await.expect("keys");
    let mut keys_before = keys_before;
    keys_before.sort();
    keys_after.sort();
    assert_eq!(keys_before, keys_after, "a key was written or removed");
}

/// One node in 4,160 pools made five pool series each on every instance's /metrics
/// (~20,000, all replaced when its languages change). A cell exports at most 1,000 pools by
/// name, the others summed under `pool="other"` (observability audit).
#[tokio::test]
async fn a_node_in_thousands_of_pools_does_not_make_thousands_of_series() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let langs: Vec<String> = (0..64).map(|i| format!("l{i:02}")).collect();
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut frame = fixture("node_register_first");
    frame["language_capabilities"] =
        json!({"asr_languages": langs, "semantic_languages": langs, "tts_languages": langs});
    node.register_id(frame, None).await;
    let text = metrics_text(&inst).await;
    let series = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count()
    };
    for family in [
        "switchyard_pool_nodes",
        "switchyard_queue_depth",
        "switchyard_pool_capacity",
        "switchyard_pool_saturation",
        "switchyard_pool_reserved",
    ] {
        assert_eq!(series(family), 1_000, "{family}");
    }
    let other = r#"switchyard_pool_nodes{cell="main",pool="other"}"#;
    assert_eq!(
        sample(&text, other),
        Some((64.0 * 64.0 + 64.0) - 999.0),
        "{other}"
    );
}

/// Nodes in thousands of pools, each with pools of its own (made-up languages): the
/// scripts keep what they derive from a node's capability signature for the library's
/// life, but not a signature of ~160 KB with its ~1 MB of lists: 256 of them pinned ~0.3 GB
/// of Lua heap (`used_memory_vm_functions`) that no TTL or eviction frees (Redis key audit).
#[tokio::test]
async fn nodes_in_thousands_of_pools_leave_the_scripts_heap_as_it_was() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let heap = async |c: &mut redis::aio::MultiplexedConnection| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory_vm_functions:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory_vm_functions")
    };
    let (_n, _) = common::actors::node_on(&inst, None).await; // the library has run
    let before = heap(&mut c).await;
    let mut nodes = Vec::new();
    for k in 0..30 {
        let langs: Vec<String> = (0..64).map(|i| format!("n{k:02}l{i:02}")).collect();
        let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
        let mut frame = fixture("node_register_first");
        frame["language_capabilities"] =
            json!({"asr_languages": langs, "semantic_languages": langs, "tts_languages": langs});
        node.register_id(frame, None).await;
        nodes.push(node);
    }
    let after = heap(&mut c).await;
    // (kept, 30 signatures held ~30 MB; garbage waits for the collector, which starts a
    // cycle at 10 x what the last one left alive)
    assert!(
        after < before + 16_000_000,
        "the scripts' heap grew from {before} to {after} bytes"
    );
}

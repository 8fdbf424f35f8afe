//! Access control, tried as an attacker would against a live instance (DESIGN §8, the
//! "node id hijack" row of §6): nobody registers, resumes or drains without the credential
//! for it, and a refused attempt changes nothing. Real redis-server, real WebSocket
//! clients, the invariant checker after every scenario.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use switchyard::server::Running;

const T: Duration = Duration::from_secs(5);

/// The HTTP status a WebSocket upgrade to `url` is refused with (panics if it succeeds).
async fn refused_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{url}: unexpected error {e}"),
        Ok(_) => panic!("{url}: upgrade accepted"),
    }
}

fn url_with(r: &Running, path: &str, token: &str) -> String {
    with_given_token(&bare_ws_url(r, path), token)
}

#[tokio::test]
async fn an_upgrade_without_the_right_credential_is_refused_before_anything_registers() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let node = bare_ws_url(&inst, "/ws/node");
    assert_eq!(refused_status(&node).await, 401, "no credential");
    let session_token = token(&[Scope::Session], None, None);
    assert_eq!(
        refused_status(&with_given_token(&node, &session_token)).await,
        403,
        "a session credential is not a node credential"
    );
    let forged = switchyard::auth::mint::hs256(
        "some-other-secret-0123456789abcdef0123",
        &switchyard::auth::mint::TokenSpec {
            scopes: vec![Scope::Node],
            sub: None,
            tenant: None,
            cell: None,
            ttl_s: 60,
        },
    )
    .unwrap();
    assert_eq!(refused_status(&with_given_token(&node, &forged)).await, 401);
    assert_eq!(
        refused_status(&with_given_token(&node, "not-a-jwt")).await,
        401
    );
    assert_eq!(
        refused_status(&bare_ws_url(&inst, "/ws/session")).await,
        401
    );
    assert!(node_keys(&mut c).await.is_empty(), "nothing registered");
    let m = metrics_text(&inst).await;
    for line in [
        r#"switchyard_auth_refused_total{kind="node",detail="missing"} 1"#,
        r#"switchyard_auth_refused_total{kind="node",detail="forbidden"} 1"#,
        r#"switchyard_auth_refused_total{kind="node",detail="invalid"} 2"#,
        r#"switchyard_auth_refused_total{kind="session",detail="missing"} 1"#,
        "switchyard_auth_open 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    // The same credential in the Authorization header works as well as in the URL.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        node.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&[Scope::Node], None, None))
            .parse()
            .unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("bearer header");
    drop(ws);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_fleet_token_cannot_hijack_a_live_node_and_the_owner_keeps_its_jobs() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut owner = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let nid = owner
        .register_id(fixture("node_register_first"), None)
        .await;
    let before = node_hash(&mut c, &nid).await;
    let (mut s, sid) =
        open_session(&ws_url(&a, "/ws/session"), fixture("session_init_one_way")).await;
    s.send(&utterance(&sid, 0)).await;
    let j0 = next_of(&mut owner, "job_assign", T).await.unwrap();

    // Another holder of the fleet credential, on the same and on another instance.
    for inst in [&a, &b] {
        let mut thief = WsClient::connect(&ws_url(inst, "/ws/node")).await;
        let mut f = fixture("node_register_reconnect");
        f["node_id"] = json!(nid);
        let started = Instant::now();
        thief.send(&f).await;
        let err = thief.recv_type("error").await;
        assert_eq!(err["code"], "NODE_ID_CONFLICT", "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "waited for a possibly dropped socket's cleanup first"
        );
        assert_eq!(thief.expect_close().await, Some(1008));
    }
    // A token bound to another node cannot even name this one.
    let mut other = WsClient::connect(&url_with(
        &b,
        "/ws/node",
        &token(&[Scope::Node], Some("node-OTHER"), None),
    ))
    .await;
    let mut f = fixture("node_register_reconnect");
    f["node_id"] = json!(nid);
    other.send(&f).await;
    assert_eq!(other.recv_type("error").await["code"], "UNAUTHORIZED");

    let after = node_hash(&mut c, &nid).await;
    for k in ["conn", "owner", "epoch", "state"] {
        assert_eq!(after[k], before[k], "{k} unchanged");
    }
    // The owner still has its node: its result is accepted and the next job is its own.
    owner.send(&answer(&j0, &nid, "mine")).await;
    let r = terminals(&mut s, 1, T).await;
    assert_eq!(r[0]["text_translated"], "mine");
    s.send(&utterance(&sid, 1)).await;
    let j1 = next_of(&mut owner, "job_assign", T).await.unwrap();
    owner.send(&answer(&j1, &nid, "still mine")).await;
    assert_eq!(
        terminals(&mut s, 1, T).await[0]["text_translated"],
        "still mine"
    );
    let m = metrics_text(&b).await;
    assert!(
        m.contains(
            r#"switchyard_messages_rejected_total{kind="node",detail="node_id_conflict"} 1"#
        ),
        "{m}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_fleet_token_reconnects_a_node_whose_socket_dropped_or_whose_instance_died() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    // The network drops (no close frame); the node is back at once, elsewhere.
    n.drop_connection();
    let started = Instant::now();
    let mut n2 = WsClient::connect(&ws_url(&b, "/ws/node")).await;
    let ack = n2
        .register(fixture("node_register_reconnect"), Some(&nid))
        .await;
    assert_eq!(ack["node_id"], nid.as_str());
    println!("reconnect after a dropped socket: {:?}", started.elapsed());
    assert_eq!(node_hash(&mut c, &nid).await["owner"], b.app.instance_id);
    // Its instance is killed (no cleanup at all): the node comes back through another.
    b.abort();
    let started = Instant::now();
    let mut n3 = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let mut f = fixture("node_register_reconnect");
    f["node_id"] = json!(nid);
    let ack = loop {
        n3.send(&f).await;
        match n3.next(T).await {
            Ok(v) if v["type"] == "node_register_ack" => break v,
            // Refused while the dead instance's presence lasts: reconnect, as lingua does.
            Ok(v) if v["code"] == "NODE_ID_CONFLICT" => {
                n3 = WsClient::connect(&ws_url(&a, "/ws/node")).await;
            }
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "back within seconds"
        );
    };
    assert_eq!(ack["node_id"], nid.as_str());
    println!("reconnect after its instance died: {:?}", started.elapsed());
    assert_eq!(node_hash(&mut c, &nid).await["owner"], a.app.instance_id);
    drop(n2);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_silent_half_open_connection_is_closed_by_pings_and_frees_its_node_id() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.ws.ping_interval_ms = 200;
        c.ws.idle_timeout_ms = 1_500;
        c.node.takeover_wait_ms = 0;
    })
    .await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let idle = Instant::now(); // (before the last frame the instance hears from it)
    let nid = n.register_id(fixture("node_register_first"), None).await;
    // While the old socket is silent but not yet idle long enough, the id is held.
    let mut early = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_reconnect");
    f["node_id"] = json!(nid);
    early.send(&f).await;
    assert_eq!(early.recv_type("error").await["code"], "NODE_ID_CONFLICT");
    // It never answers a ping (this client reads nothing): closed as idle (after 1.5 s),
    // then free: the record no longer names a live connection.
    eventually(
        Duration::from_secs(10),
        "the idle socket's node let go",
        || {
            let mut c = c.clone();
            let nid = nid.clone();
            async move {
                let state = node_hash(&mut c, &nid).await.remove("state")?;
                (state != "ready").then_some(())
            }
        },
    )
    .await;
    assert!(
        idle.elapsed() >= Duration::from_millis(1_500),
        "not before the idle timeout"
    );
    let mut late = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let ack = late
        .register(fixture("node_register_reconnect"), Some(&nid))
        .await;
    assert_eq!(ack["node_id"], nid.as_str());
    // (Its close frame, 4003, may not reach a client that answers nothing.)
    n.expect_close().await;
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_messages_rejected_total{kind="node",detail="idle"} 1"#),
        "{m}"
    );
    // A client that reads (and so answers pings) stays connected however quiet it is.
    late.expect_silence(Duration::from_millis(2_000)).await;
    assert_eq!(node_hash(&mut c, &nid).await["state"], "ready");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn resume_needs_the_resume_token_and_a_refused_one_changes_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = {
        let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
        let id = n.register_id(fixture("node_register_first"), None).await;
        (n, id)
    };
    let (mut s, ack) = open_session_ack(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    let resume_token = ack["resume_token"]
        .as_str()
        .expect("resume_token")
        .to_string();
    let secret = resume_token.trim_start_matches("rt-");
    assert!(
        secret.len() >= 32 && secret.chars().all(|c| c.is_ascii_hexdigit()),
        "128 random bits: {resume_token}"
    );
    let stored: HashMap<String, String> =
        c.hgetall(format!("{PREFIX}session:{sid}")).await.unwrap();
    assert_eq!(stored["resume_hash"].len(), 64, "SHA-256 hex");
    assert!(
        !stored.values().any(|v| v.contains(secret)),
        "the token itself is not stored"
    );

    let attempts = [
        None,
        Some("rt-00000000000000000000000000000000".to_string()),
    ];
    for proof in attempts {
        let mut thief = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
        let mut init = fixture("session_init_one_way");
        init["resume_session_id"] = json!(sid);
        init["resume_token"] = json!(proof);
        thief.send(&init).await;
        let err = thief.recv_type("error").await;
        assert_eq!(err["code"], "UNAUTHORIZED", "{err}");
        thief.expect_silence(Duration::from_millis(200)).await;
    }
    let after: HashMap<String, String> = c.hgetall(format!("{PREFIX}session:{sid}")).await.unwrap();
    assert_eq!(
        after["conn"], stored["conn"],
        "the live session stays where it is"
    );
    // The owner goes on receiving its translations.
    s.send(&utterance(&sid, 0)).await;
    let j = next_of(&mut n, "job_assign", T).await.unwrap();
    n.send(&answer(&j, &nid, "for the owner")).await;
    assert_eq!(
        terminals(&mut s, 1, T).await[0]["text_translated"],
        "for the owner"
    );

    // The owner itself, reconnecting with its token, resumes.
    s.drop_connection();
    let mut back = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = json!(resume_token);
    init["last_received_index"] = json!(0);
    back.send(&init).await;
    let ack = back.recv_type("session_init_ack").await;
    assert_eq!(ack["resumed"], true);
    assert_eq!(
        ack["resume_token"],
        resume_token.as_str(),
        "same secret, still valid"
    );
    invariants::check(&mut c).await;
}

/// An instance with `auth.mode = "open"` and no secret.
async fn start_open(redis: &RedisServer) -> Running {
    start_tweaked(redis, |c| {
        c.auth.mode = "open".into();
        c.auth.hs256_secrets.clear();
    })
    .await
}

#[tokio::test]
async fn open_mode_lets_everyone_in_and_says_so() {
    let redis = RedisServer::start().await;
    let inst = start_open(&redis).await;
    let mut c = redis.client().await;
    let body = ready(&inst).await;
    assert_eq!(body["auth"], "open");
    assert!(metrics_text(&inst).await.contains("switchyard_auth_open 1"));
    let mut n = WsClient::connect(&bare_ws_url(&inst, "/ws/node")).await;
    n.register_id(fixture("node_register_first"), None).await;
    let r = reqwest::get(http_url(&inst, "/api/v1/nodes"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    invariants::check(&mut c).await;
}

/// In open mode the frame's `tenant_id` decides a node's tenant, so nothing but the node
/// record stops a node id registered for one tenant from being taken under another: the
/// same `register.lua` rule as for credentials refuses it (UNAUTHORIZED, closed 1008) while
/// the record exists, and changes nothing; the id's own tenant registers it again.
#[tokio::test]
async fn open_mode_refuses_a_node_id_registered_under_another_tenant() {
    let redis = RedisServer::start().await;
    let inst = start_open(&redis).await;
    let mut c = redis.client().await;
    let url = bare_ws_url(&inst, "/ws/node");
    let as_tenant = |t: &str| {
        let mut f = fixture("node_register_first");
        f["tenant_id"] = json!(t);
        f
    };
    let mut n = WsClient::connect(&url).await;
    let nid = n.register_id(as_tenant("acme"), None).await;
    n.drop_connection();
    eventually(Duration::from_secs(5), "the node is disconnected", || {
        let (mut c, nid) = (c.clone(), nid.clone());
        async move { (node_hash(&mut c, &nid).await["state"] == "disconnected").then_some(()) }
    })
    .await;
    let before = node_hash(&mut c, &nid).await;
    let mut thief = WsClient::connect(&url).await;
    let mut f = as_tenant("globex");
    f["node_id"] = json!(nid);
    thief.send(&f).await;
    let e = thief.recv_type("error").await;
    assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
    assert_eq!(thief.expect_close().await, Some(1008));
    assert_eq!(node_hash(&mut c, &nid).await, before, "the record changed");
    let mut back = WsClient::connect(&url).await;
    back.register_id(as_tenant("acme"), Some(&nid)).await;
    invariants::check(&mut c).await;
}

#[path = "auth/admin.rs"]
mod admin;

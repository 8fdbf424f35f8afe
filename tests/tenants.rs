//! What a credential's claims bound: its `tenant` is the tenant of everything it does, a
//! tenant holds at most `limits.max_connections_per_tenant` connections of an instance, and a
//! subject (`sub`, e.g. one end user) at most `limits.max_sessions_per_subject` live sessions
//! of the cell. Real redis-server, real WebSocket clients, invariants after each scenario.

mod common;

use std::time::Duration;

use common::actors::*;
use common::cell::{caps, cell_config};
use common::invariants::{self, PREFIX};
use common::model::Instance;
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use switchyard::server::Running;
use switchyard::store::nodes::{HeartbeatReply, NodeClaim, OfflineReply, RegisterReply};

fn url_with(r: &Running, path: &str, token: &str) -> String {
    with_given_token(&bare_ws_url(r, path), token)
}

/// `r` counted exactly `n` refusals of `kind`/`detail` in `switchyard_limited_total`.
async fn assert_limited(r: &Running, kind: &str, detail: &str, n: u32) {
    let m = metrics_text(r).await;
    let series = format!(r#"switchyard_limited_total{{kind="{kind}",detail="{detail}"}} {n}"#);
    assert!(m.contains(&series), "want {series}:\n{m}");
}

/// Review finding: a credential without `tenant` (the usual public fleet or app token) could
/// name any tenant in its frame and become it: a node then received a strict tenant's jobs
/// and audio, a session billed and used that tenant's pools. Such a frame is refused, and
/// nothing is written.
#[tokio::test]
async fn a_credential_without_tenant_cannot_name_one() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.strict_tenants = vec!["strictco".into()]).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["tenant_id"] = json!("strictco");
    n.send(&f).await;
    let e = n.recv_type("error").await;
    assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
    assert!(node_keys(&mut c).await.is_empty(), "nothing registered");
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("strictco");
    s.send(&init).await;
    let e = s.recv_type("error").await;
    assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
    let sessions: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}session:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(sessions.is_empty(), "nothing opened: {sessions:?}");
    // Without a tenant_id they are public peers, as before.
    n.register_id(fixture("node_register_first"), None).await;
    s.send(&fixture("session_init_one_way")).await;
    s.recv_type("session_init_ack").await;
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn the_credential_tenant_is_the_tenant_and_a_frame_cannot_claim_another() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let acme_node = token(&[Scope::Node], None, Some("acme"));
    let mut n = WsClient::connect(&url_with(&inst, "/ws/node", &acme_node)).await;
    let mut f = fixture("node_register_first");
    f["tenant_id"] = json!("globex");
    n.send(&f).await;
    assert_eq!(n.recv_type("error").await["code"], "UNAUTHORIZED");
    assert!(node_keys(&mut c).await.is_empty());
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let h = node_hash(&mut c, &nid).await;
    assert_eq!(h["tenant"], "acme", "{h:?}");
    let pools: Vec<String> = c
        .smembers(format!("{PREFIX}node:{nid}:pools"))
        .await
        .unwrap();
    assert!(
        !pools.is_empty() && pools.iter().all(|p| p.starts_with("tenant:acme:")),
        "{pools:?}"
    );

    let acme_session = token(&[Scope::Session], None, Some("acme"));
    let mut s = WsClient::connect(&url_with(&inst, "/ws/session", &acme_session)).await;
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("globex");
    s.send(&init).await;
    assert_eq!(s.recv_type("error").await["code"], "UNAUTHORIZED");
    s.send(&fixture("session_init_one_way")).await;
    let ack = s.recv_type("session_init_ack").await;
    let sid = ack["session_id"].as_str().unwrap();
    let tenant: String = c
        .hget(format!("{PREFIX}session:{sid}"), "tenant")
        .await
        .unwrap();
    assert_eq!(tenant, "acme");
    // A session of another tenant cannot be resumed with this credential, token or not.
    let globex = token(&[Scope::Session], None, Some("globex"));
    let mut other = WsClient::connect(&url_with(&inst, "/ws/session", &globex)).await;
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = ack["resume_token"].clone();
    other.send(&init).await;
    assert_eq!(other.recv_type("error").await["code"], "UNAUTHORIZED");
    invariants::check(&mut c).await;
}

/// Audit finding: `register` let a fleet credential (no `sub`) reconnect any node id no live
/// connection held, whatever tenant the record was: a globex fleet token took acme's
/// disconnected node, its in-flight job (and the job's audio, on a job_assign re-sent to
/// the new holder) went with it, and acme's genuine node was refused as the id's holder.
/// Now a reconnect must be of the record's tenant (public for public); a credential whose
/// `sub` is the id still may take it.
#[tokio::test]
async fn another_tenants_token_cannot_take_a_node_id_fleet_or_bound() {
    let redis = RedisServer::start().await;
    // (the dropped node keeps its job through the whole scenario, however slow the machine)
    let inst = start_tweaked(&redis, |c| c.node.disconnect_grace_ms = 10_000).await;
    let mut c = redis.client().await;
    let acme = token(&[Scope::Node], None, Some("acme"));
    let nid = "node-ACME0001";
    let mut n = WsClient::connect(&url_with(&inst, "/ws/node", &acme)).await;
    n.register_id(fixture("node_register_first"), Some(nid))
        .await;
    // acme's session gives the node a job; the node then drops without a close frame
    // (disconnected: it keeps the job for node.disconnect_grace_ms).
    let app = token(&[Scope::Session], None, Some("acme"));
    let (mut s, sid) = open_session(
        &url_with(&inst, "/ws/session", &app),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let assign = n.recv_type("job_assign").await;
    n.drop_connection();
    eventually(Duration::from_secs(5), "the node is disconnected", || {
        let mut c = c.clone();
        async move { (node_hash(&mut c, nid).await["state"] == "disconnected").then_some(()) }
    })
    .await;
    let before = node_hash(&mut c, nid).await;

    // Another tenant's fleet token, a public one, and another tenant's token bound to this
    // very id (tenants may name their nodes alike; audit finding: it took the record over,
    // and could answer acme's job into acme's session) are refused; nothing changes.
    let globex = token(&[Scope::Node], None, Some("globex"));
    let public = token(&[Scope::Node], None, None);
    let bound = token(&[Scope::Node], Some(nid), Some("globex"));
    for cred in [&globex, &public, &bound] {
        let mut thief = WsClient::connect(&url_with(&inst, "/ws/node", cred)).await;
        let mut f = fixture("node_register_first");
        f["node_id"] = json!(nid);
        thief.send(&f).await;
        let e = thief.recv_type("error").await;
        assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
        assert_eq!(thief.expect_close().await, Some(1008));
        assert_eq!(node_hash(&mut c, nid).await, before, "the record changed");
    }

    // acme's own fleet token reconnects the node and can answer the job it kept.
    let mut n = WsClient::connect(&url_with(&inst, "/ws/node", &acme)).await;
    n.register_id(fixture("node_register_first"), Some(nid))
        .await;
    let mut result = fixture("job_result_success");
    for k in ["job_id", "attempt_id", "session_id", "utterance_index"] {
        result[k] = assign[k].clone();
    }
    n.send(&result).await;
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_share_of_an_instance() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_connections_per_tenant = 2).await;
    let acme = token(&[Scope::Session], None, Some("acme"));
    let a1 = WsClient::connect(&url_with(&inst, "/ws/session", &acme)).await;
    let _a2 = WsClient::connect(&url_with(&inst, "/ws/session", &acme)).await;
    let url = url_with(&inst, "/ws/session", &acme);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 429),
        other => panic!("third acme connection: {:?}", other.map(|_| ())),
    }
    // Other tenants and tenant-less credentials are not affected.
    let globex = token(&[Scope::Session], None, Some("globex"));
    let _g = WsClient::connect(&url_with(&inst, "/ws/session", &globex)).await;
    let _n = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    // A slot comes back when a connection ends.
    a1.close().await;
    eventually(
        std::time::Duration::from_secs(3),
        "slot given back",
        || async {
            tokio_tungstenite::connect_async(&url)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_limited_total{kind="session",detail="tenant_connections"} "#),
        "{m}"
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

#[tokio::test]
async fn a_subject_holds_at_most_its_live_sessions_across_instances() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.limits.max_sessions_per_subject = 2).await;
    let b = start_tweaked(&redis, |c| c.limits.max_sessions_per_subject = 2).await;
    let mut c = redis.client().await;
    let alice = token(&[Scope::Session], Some("user-alice"), None);
    let (s1, ack1) = open_session_ack(
        &url_with(&a, "/ws/session", &alice),
        fixture("session_init_one_way"),
    )
    .await;
    let (_s2, _) = open_session_ack(
        &url_with(&b, "/ws/session", &alice),
        fixture("session_init_one_way"),
    )
    .await;
    let mut s3 = WsClient::connect(&url_with(&a, "/ws/session", &alice)).await;
    s3.send(&fixture("session_init_one_way")).await;
    let err = s3.recv_type("error").await;
    assert_eq!(err["code"], "RATE_LIMITED", "{err}");
    let zk = format!("{PREFIX}subject:user-alice:sessions");
    assert_eq!(
        c.zcard::<_, u64>(&zk).await.unwrap(),
        2,
        "nothing written for the refused one"
    );
    // Another subject is not affected.
    let bob = token(&[Scope::Session], Some("user-bob"), None);
    open_session_ack(
        &url_with(&b, "/ws/session", &bob),
        fixture("session_init_one_way"),
    )
    .await;
    // Resuming is always allowed; closing a session frees its place.
    let sid1 = ack1["session_id"].as_str().unwrap().to_string();
    s1.drop_connection();
    let mut back = WsClient::connect(&url_with(&b, "/ws/session", &alice)).await;
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid1);
    init["resume_token"] = ack1["resume_token"].clone();
    back.send(&init).await;
    assert_eq!(back.recv_type("session_init_ack").await["resumed"], true);
    back.send(&json!({"type": "session_close", "session_id": sid1, "reason": "done"}))
        .await;
    back.recv_type("session_close_ack").await;
    s3.send(&fixture("session_init_one_way")).await;
    s3.recv_type("session_init_ack").await;
    assert_eq!(c.zcard::<_, u64>(&zk).await.unwrap(), 2);
    assert_limited(&a, "session", "sessions_per_subject", 1).await;
    // Tenants count apart: their users may share a name (audit finding: the count was
    // keyed by `sub` alone, so another tenant's "user-alice" was refused here).
    let acme = token(&[Scope::Session], Some("user-alice"), Some("acme"));
    let globex = token(&[Scope::Session], Some("user-alice"), Some("globex"));
    for _ in 0..2 {
        open_session_ack(
            &url_with(&a, "/ws/session", &acme),
            fixture("session_init_one_way"),
        )
        .await;
    }
    let mut over = WsClient::connect(&url_with(&b, "/ws/session", &acme)).await;
    over.send(&fixture("session_init_one_way")).await;
    assert_eq!(over.recv_type("error").await["code"], "RATE_LIMITED");
    open_session_ack(
        &url_with(&b, "/ws/session", &globex),
        fixture("session_init_one_way"),
    )
    .await;
    let acme_key = format!("{PREFIX}subject:acme/user-alice:sessions");
    assert_eq!(c.zcard::<_, u64>(&acme_key).await.unwrap(), 2);
    assert_eq!(c.zcard::<_, u64>(&zk).await.unwrap(), 2);
    invariants::check(&mut c).await;
}

/// Review finding: a session resumed with a credential that has no tenant (allowed: only a
/// credential *with* a tenant must match the session's) took the credential's tenant, none,
/// for its later `utterance`s: a strict tenant's utterances were routed to public nodes.
/// The resumed session keeps its own tenant.
#[tokio::test]
async fn a_resume_without_tenant_keeps_the_sessions_tenant_and_its_strictness() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.strict_tenants = vec!["strictco".into()]).await;
    let mut c = redis.client().await;
    // Only a public node: a strict tenant's utterance must never reach it.
    let (mut public, _) = node_on(&inst, None).await;
    let strict = token(&[Scope::Session], None, Some("strictco"));
    let (s, ack) = open_session_ack(
        &url_with(&inst, "/ws/session", &strict),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().expect("sid").to_string();
    s.drop_connection();

    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = ack["resume_token"].clone();
    let (mut s, ack) = open_session_ack(&ws_url(&inst, "/ws/session"), init).await;
    assert_eq!(ack["resumed"], true, "{ack}");
    s.send(&utterance(&sid, 0)).await;
    let got = terminals(&mut s, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE", "{got:?}");
    assert!(
        next_of(
            &mut public,
            "job_assign",
            std::time::Duration::from_millis(300)
        )
        .await
        .is_none(),
        "a strict tenant's utterance reached a public node"
    );
    invariants::check(&mut c).await;
}

#[path = "tenants/fleets.rs"]
mod fleets;

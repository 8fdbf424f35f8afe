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

/// Resource audit: a fleet node token (no `sub`) could register any number of nodes, each
/// in up to 4,160 pools (~1.7 MB of Redis each). Its live nodes are counted across the
/// cell, under the token's fingerprint: a node new to the count beyond
/// `limits.max_nodes_per_credential` is refused and nothing is written; a node already
/// counted reconnects; a node that goes offline frees its place; another credential is not
/// affected, and a member whose record is gone is dropped when the count is full.
#[tokio::test]
async fn a_fleet_credential_holds_at_most_its_live_nodes_across_instances() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.limits.max_nodes_per_credential = 2).await;
    let b = start_tweaked(&redis, |c| c.limits.max_nodes_per_credential = 2).await;
    let mut c = redis.client().await;
    let fleet = token(&[Scope::Node], None, None);
    let fk = format!(
        "{PREFIX}fleet:{}:nodes",
        switchyard::auth::fingerprint(&fleet)
    );
    let (url_a, url_b) = (
        url_with(&a, "/ws/node", &fleet),
        url_with(&b, "/ws/node", &fleet),
    );
    let (mut n1, mut n2) = (
        WsClient::connect(&url_a).await,
        WsClient::connect(&url_b).await,
    );
    let id1 = n1.register_id(fixture("node_register_first"), None).await;
    let id2 = n2.register_id(fixture("node_register_first"), None).await;
    let mut n3 = WsClient::connect(&url_a).await;
    n3.send(&fixture("node_register_first")).await;
    let err = n3.recv_type("error").await;
    assert_eq!(err["code"], "RATE_LIMITED", "{err}");
    assert_eq!(n3.expect_close().await, Some(1008));
    let records = node_keys(&mut c).await;
    let records: Vec<&String> = (records.iter())
        .filter(|k| !k[PREFIX.len() + "node:".len()..].contains(':'))
        .collect();
    assert_eq!(
        records.len(),
        2,
        "nothing written for the third: {records:?}"
    );
    let members: Vec<String> = c.smembers(&fk).await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(
        members.contains(&id1) && members.contains(&id2),
        "{members:?}"
    );
    // Another fleet credential, and a token bound to its node id, are not affected.
    // (another `exp`: a token minted with the same claims in the same second is the same)
    let other = short_token(&[Scope::Node], 1800);
    let mut o = WsClient::connect(&url_with(&b, "/ws/node", &other)).await;
    o.register_id(fixture("node_register_first"), None).await;
    let bound = token(&[Scope::Node], Some("gpu-bound-1"), None);
    let mut s = WsClient::connect(&url_with(&a, "/ws/node", &bound)).await;
    s.register_id(fixture("node_register_first"), Some("gpu-bound-1"))
        .await;
    // A counted node that dropped reconnects (it keeps its place through the grace).
    n1.drop_connection();
    let mut back = WsClient::connect(&url_b).await;
    assert_eq!(
        back.register_id(fixture("node_register_first"), Some(&id1))
            .await,
        id1
    );
    // An orderly close takes the node offline: its place is free.
    n2.close().await;
    eventually(
        Duration::from_secs(3),
        "a place freed by the offline node",
        || {
            let (mut c, fk, want) = (c.clone(), fk.clone(), vec![id1.clone()]);
            async move {
                let m: Vec<String> = c.smembers(&fk).await.ok()?;
                (m == want).then_some(())
            }
        },
    )
    .await;
    // A member left behind (its record gone) is dropped when the count is full, at most
    // once per liveness interval: the third node's refusal looked already.
    let _: () = c.sadd(&fk, "ghost-node").await.unwrap();
    let mut n4 = WsClient::connect(&url_a).await;
    n4.send(&fixture("node_register_first")).await;
    assert_eq!(n4.recv_type("error").await["code"], "RATE_LIMITED");
    let pruned = fk.replace(":nodes", ":pruned");
    let ttl: i64 = c.pttl(&pruned).await.unwrap();
    assert!(ttl > 0, "the last look at the members expires: {ttl}");
    let _: () = c.del(&pruned).await.unwrap(); // (as if the interval had passed)
    let mut n4 = WsClient::connect(&url_a).await;
    let id4 = n4.register_id(fixture("node_register_first"), None).await;
    let mut members: Vec<String> = c.smembers(&fk).await.unwrap();
    members.sort();
    let mut want = vec![id1.clone(), id4];
    want.sort();
    assert_eq!(members, want);
    assert_limited(&a, "node", "nodes_per_credential", 2).await;
    invariants::check(&mut c).await;
}

/// A silent node is taken offline by a sweep, leaving its credential's count; when another
/// instance's sweep did it, the node's own instance keeps its socket open, and the node's
/// next heartbeat would revive the record. It comes back only into a free place (else one
/// credential could pass its limit by letting nodes fall silent and registering others
/// meanwhile): refused, the record stays offline, the node is told and closed 1008.
#[tokio::test]
async fn a_silent_node_revived_by_a_heartbeat_needs_a_place_in_its_count() {
    let redis = RedisServer::start().await;
    let tweak = |c: &mut switchyard::config::Config| {
        c.limits.max_nodes_per_credential = 1;
        c.node.liveness_ms = Some(900);
    };
    // (the node's own instance does not sweep within the test: the other one finds it)
    let a = start_tweaked(&redis, |c| {
        tweak(c);
        c.sweep.interval_ms = 600_000;
    })
    .await;
    let b = start_tweaked(&redis, tweak).await;
    let mut c = redis.client().await;
    let fleet = token(&[Scope::Node], None, None);
    let mut n1 = WsClient::connect(&url_with(&a, "/ws/node", &fleet)).await;
    let id1 = n1.register_id(fixture("node_register_first"), None).await;
    let record = format!("{PREFIX}node:{id1}");
    eventually(Duration::from_secs(5), "the silent node offline", || {
        let (mut c, k) = (c.clone(), record.clone());
        async move {
            let s: Option<String> = c.hget(&k, "state").await.ok()?;
            (s.as_deref() == Some("offline")).then_some(())
        }
    })
    .await;
    let mut n2 = WsClient::connect(&url_with(&b, "/ws/node", &fleet)).await;
    let id2 = n2.register_id(fixture("node_register_first"), None).await;
    // (n2 stays live however slow the machine: its liveness is 900 ms)
    n2.heartbeat(&id2, None).await;
    n1.heartbeat(&id1, None).await;
    let err = n1.recv_type("error").await;
    assert_eq!(err["code"], "RATE_LIMITED", "{err}");
    assert_eq!(n1.expect_close().await, Some(1008));
    let state: String = c.hget(&record, "state").await.unwrap();
    assert_eq!(state, "offline", "not revived");
    assert_limited(&a, "node", "nodes_per_credential", 1).await;
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

/// Node `n1` registers through `inst` on connection `token` with fleet credential `fleet`,
/// as the gateway registers a node of a fleet token.
async fn register_n1(inst: &Instance, token: &str, fleet: &str) -> RegisterReply {
    let extra = [("capacity", "1".to_string())];
    let reg = inst
        .store
        .register(
            "n1",
            NodeClaim::Reconnect,
            token,
            &caps(0),
            &extra,
            0,
            Some(fleet),
        )
        .await
        .expect("register");
    reg.reply
}

/// Second review of the fleet count (L1): a heartbeat that revives an offline record counted
/// the node under the record's `fleet`, not the connection's credential. A node registered
/// while the limit was 0 (recorded uncounted) came back uncounted once the limit was on, so
/// a fleet could hold more live nodes than its limit until they registered again. Two
/// instances of one cell, one before and one after the limit was turned on (a rolling
/// configuration change), through the scripts as the gateway calls them.
#[tokio::test]
async fn a_revived_node_is_counted_under_its_connections_credential() {
    let redis = RedisServer::start().await;
    let mut before = cell_config(&redis.url());
    before.limits.max_nodes_per_credential = 0;
    let mut after = before.clone();
    after.limits.max_nodes_per_credential = 1;
    let old = Instance::new(&before, "i-old".into());
    let new = Instance::new(&after, "i-new".into());
    let (fp, token) = (Some("fp-1"), "i-old/1");
    let reg = register_n1(&old, token, "fp-1").await;
    assert!(matches!(reg, RegisterReply::Ok { .. }), "{reg:?}");
    let mut r = redis.client().await;
    let counted = format!("{PREFIX}fleet:fp-1:nodes");
    let members: Vec<String> = r.smembers(&counted).await.expect("smembers");
    assert!(members.is_empty(), "limit 0 counts nothing: {members:?}");
    let off = old
        .store
        .node_offline("n1", token, 0, "test")
        .await
        .expect("offline");
    assert_eq!(
        off.reply,
        OfflineReply::Ok {
            state: "offline".into()
        }
    );
    // the same connection's heartbeat reaches an instance with the limit on
    let hb = new
        .store
        .heartbeat("n1", token, &caps(0), &[], fp)
        .await
        .expect("heartbeat");
    assert!(
        matches!(hb.reply, HeartbeatReply::Ok { .. }),
        "{:?}",
        hb.reply
    );
    let members: Vec<String> = r.smembers(&counted).await.expect("smembers");
    assert_eq!(
        members,
        vec!["n1".to_string()],
        "the revived node is counted"
    );
    let field: Option<String> = r
        .hget(format!("{PREFIX}node:n1"), "fleet")
        .await
        .expect("hget");
    assert_eq!(field.as_deref(), Some("fp-1"), "its record says where");
    invariants::check(&mut r).await;
}

/// The first refusal of a full fleet count read every member's record in one call: ~23 ms
/// of Redis at 10,000 members (session 18's review), a stall for every client of the cell.
/// A look now reads at most ~256 members per call and the next refusal resumes it, however
/// long after (a review of the change: a cursor that lasted one liveness interval sent
/// refusals further apart back to the same first, live, members for ever), until it has
/// gone round the set (or a place is found).
#[tokio::test]
async fn a_look_for_members_left_behind_is_bounded_per_call_and_resumed() {
    let redis = RedisServer::start().await;
    let mut cfg = cell_config(&redis.url());
    cfg.limits.max_nodes_per_credential = 700;
    cfg.node.liveness_ms = Some(200); // refusals below come further apart than this
    let inst = Instance::new(&cfg, "i-a".into());
    let mut r = redis.client().await;
    let fk = format!("{PREFIX}fleet:fp-2:nodes");
    let pk = format!("{PREFIX}fleet:fp-2:pruned");
    // 600 live members (their records say so) and 400 left behind (no record): full
    let live: Vec<String> = (0..600).map(|i| format!("live-{i}")).collect();
    let ghosts: Vec<String> = (0..400).map(|i| format!("ghost-{i}")).collect();
    let mut p = redis::pipe();
    for id in &live {
        let fields = [("state", "ready"), ("fleet", "fp-2")];
        p.hset_multiple(format!("{PREFIX}node:{id}"), &fields)
            .ignore();
    }
    p.sadd(&fk, &live).ignore().sadd(&fk, &ghosts).ignore();
    let _: () = p.query_async(&mut r).await.expect("members");
    let mut refused = 0;
    loop {
        match register_n1(&inst, "i-a/1", "fp-2").await {
            RegisterReply::Limit { .. } => refused += 1,
            RegisterReply::Ok { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
        let left: usize = r.scard(&fk).await.expect("scard");
        let mark: String = r.get(&pk).await.expect("the look's mark");
        assert!(mark.starts_with('c'), "{left} left, mark {mark}");
        if refused == 1 {
            assert!(
                left > 800,
                "one call looks at some members, not all: {left} of 1000 left"
            );
        }
        assert!(refused < 8, "the look does not go round: {left} left");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(refused >= 2, "1000 members took {refused} refusals");
    // the stand-ins (and the members a look had no need to reach) leave; the cell holds
    // what the scripts wrote
    let mut p = redis::pipe();
    for id in &live {
        p.del(format!("{PREFIX}node:{id}")).ignore();
    }
    p.srem(&fk, &live).ignore().srem(&fk, &ghosts).ignore();
    let _: () = p.query_async(&mut r).await.expect("cleanup");
    let members: Vec<String> = r.smembers(&fk).await.expect("smembers");
    assert_eq!(members, vec!["n1".to_string()]);
    invariants::check(&mut r).await;
}

//! Several cells in one deployment (`[[cells]]`): a peer's tenant decides its cell, a
//! credential's `cell` claim places a tenant-less peer, every instance serves every cell
//! (deliveries through each cell's inbox, presence and takeover per cell), the admin API and
//! `/metrics` name the cell. Real redis-server, two in-process instances, real WebSocket
//! clients; the invariant checker runs over every cell it finds.

mod common;

use std::time::Duration;

use common::actors::*;
use common::invariants;
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};
use switchyard::config::{CellSpec, Config};
use switchyard::server::Running;

const EU: &str = "{switchyard:eu}:";
const US: &str = "{switchyard:us}:";

/// Two cells: `eu` (the default, tenant acme) and `us` (tenant globex).
fn two_cells(cfg: &mut Config) {
    cfg.cells = vec![
        CellSpec {
            name: "eu".into(),
            tenants: vec!["acme".into()],
            default: true,
        },
        CellSpec {
            name: "us".into(),
            tenants: vec!["globex".into()],
            default: false,
        },
    ];
}

fn url_as(r: &Running, path: &str, token: &str) -> String {
    with_given_token(&bare_ws_url(r, path), token)
}

async fn node_as(r: &Running, token: &str, id: Option<&str>) -> (WsClient, String) {
    let mut n = WsClient::connect(&url_as(r, "/ws/node", token)).await;
    let nid = n.register_id(fixture("node_register_first"), id).await;
    (n, nid)
}

async fn exists(c: &mut redis::aio::MultiplexedConnection, key: String) -> bool {
    c.exists(&key).await.expect("exists")
}

#[tokio::test]
async fn tenants_live_in_their_cells_and_every_instance_serves_every_cell() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, two_cells).await;
    let b = start_tweaked(&redis, two_cells).await;
    let mut c = redis.client().await;

    // The same node id in two cells, on one instance: two nodes, neither replaces the other.
    let acme_node = token(&[Scope::Node], None, Some("acme"));
    let globex_node = token(&[Scope::Node], None, Some("globex"));
    let (mut eu_gpu, _) = node_as(&a, &acme_node, Some("gpu-1")).await;
    let (mut us_gpu, _) = node_as(&a, &globex_node, Some("gpu-1")).await;
    assert!(exists(&mut c, format!("{EU}node:gpu-1")).await);
    assert!(exists(&mut c, format!("{US}node:gpu-1")).await);
    let tenant: String = c.hget(format!("{US}node:gpu-1"), "tenant").await.unwrap();
    assert_eq!(tenant, "globex");

    // A public node placed in `us` by its credential's cell claim; one without in `eu`.
    let us_fleet = cell_token(&[Scope::Node], None, "us");
    let (_us_pub, us_pub_id) = node_as(&b, &us_fleet, None).await;
    let (_eu_pub, eu_pub_id) = node_on(&b, None).await;
    assert!(exists(&mut c, format!("{US}node:{us_pub_id}")).await);
    assert!(exists(&mut c, format!("{EU}node:{eu_pub_id}")).await);
    assert!(!exists(&mut c, format!("{EU}node:{us_pub_id}")).await);

    // A claim contradicting the tenant's cell is refused; nothing is written.
    let wrong = cell_token(&[Scope::Node], Some("acme"), "us");
    let mut n = WsClient::connect(&url_as(&a, "/ws/node", &wrong)).await;
    let mut f = fixture("node_register_first");
    f["node_id"] = json!("nope");
    n.send(&f).await;
    let e = n.recv_type("error").await;
    assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
    assert!(!exists(&mut c, format!("{US}node:nope")).await);
    assert!(!exists(&mut c, format!("{EU}node:nope")).await);
    let unknown = cell_token(&[Scope::Session], None, "mars");
    let mut s = WsClient::connect(&url_as(&a, "/ws/session", &unknown)).await;
    s.send(&fixture("session_init_one_way")).await;
    assert_eq!(s.recv_type("error").await["code"], "UNAUTHORIZED");

    // A globex session on instance b: its job goes to a `us` node only, across instances
    // through the `us` inbox when that node is on a.
    drop(_us_pub);
    let globex = token(&[Scope::Session], None, Some("globex"));
    let (mut gs, gsid) = open_session(
        &url_as(&b, "/ws/session", &globex),
        fixture("session_init_one_way"),
    )
    .await;
    assert!(exists(&mut c, format!("{US}session:{gsid}")).await);
    gs.send(&utterance(&gsid, 0)).await;
    let job = assign(&mut us_gpu).await;
    us_gpu.send(&answer(&job, "gpu-1", "hello us")).await;
    let t = terminals(&mut gs, 1, Duration::from_secs(5)).await;
    assert_eq!(t[0]["type"], "translation_result", "{t:?}");
    let dispatched: String = c
        .hget(
            format!("{US}job:{}", job["job_id"].as_str().unwrap()),
            "node",
        )
        .await
        .unwrap();
    assert_eq!(dispatched, "gpu-1");
    // The eu node with the same id saw nothing.
    assert!(
        next_of(&mut eu_gpu, "job_assign", Duration::from_millis(300))
            .await
            .is_none()
    );

    // Both instances are present in both cells.
    for prefix in [EU, US] {
        let present: Vec<String> = c.zrange(format!("{prefix}instances"), 0, -1).await.unwrap();
        for inst in [&a, &b] {
            assert!(
                present.contains(&inst.app.instance_id),
                "{prefix}: {present:?}"
            );
        }
    }

    // The admin API and /metrics name the cell.
    let (code, nodes) = get_json(&http_url(&a, "/api/v1/nodes")).await;
    assert_eq!(code, 200);
    let cells_of = |v: &Value, id: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|n| n["id"] == id)
            .map(|n| n["cell"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let mut gpu_cells = cells_of(&nodes, "gpu-1");
    gpu_cells.sort();
    assert_eq!(gpu_cells, ["eu", "us"], "{nodes}");
    let (_, us_only) = get_json(&http_url(&a, "/api/v1/nodes?cell=us")).await;
    let us_only = us_only.as_array().expect("nodes").clone();
    assert!(us_only.iter().all(|n| n["cell"] == "us"), "{us_only:?}");
    assert!(
        us_only.iter().any(|n| n["id"] == "gpu-1"),
        "gpu-1 serves us: {us_only:?}"
    );
    let (code, _) = get_json(&http_url(&a, "/api/v1/nodes?cell=mars")).await;
    assert_eq!(code, 404);
    let (code, job_view) = get_json(&http_url(
        &b,
        &format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap()),
    ))
    .await;
    assert_eq!(
        (code, job_view["cell"].as_str()),
        (200, Some("us")),
        "{job_view}"
    );
    let ready = ready(&a).await;
    assert_eq!(ready["cells"], json!(["eu", "us"]), "{ready}");
    let m = metrics_text(&b).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("switchyard_script_calls_total{cell=\"us\",script=\"submit\"")),
        "no per-cell script metric"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("switchyard_nodes{cell=\"eu\"")),
        "no per-cell node gauge"
    );
    // Drain finds the node in its cell; `?cell=` picks among equal ids.
    let resp = reqwest::Client::new()
        .post(http_url(&a, "/api/v1/nodes/gpu-1/drain?cell=us"))
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("drain");
    assert_eq!(resp.status().as_u16(), 200);
    let us_state: String = c.hget(format!("{US}node:gpu-1"), "state").await.unwrap();
    let eu_state: String = c.hget(format!("{EU}node:gpu-1"), "state").await.unwrap();
    assert_eq!(
        (us_state.as_str(), eu_state.as_str()),
        ("draining", "ready")
    );

    invariants::check(&mut c).await;
    let keys: Vec<String> = c.keys("*").await.unwrap();
    let cells = invariants::cell_prefixes(&keys);
    assert_eq!(cells.len(), 2, "{cells:?}");
}

#[tokio::test]
async fn a_dead_instance_is_taken_over_in_every_cell() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, two_cells).await;
    let b = start_tweaked(&redis, two_cells).await;
    let mut c = redis.client().await;
    let dead = b.app.instance_id.clone();
    // A globex session on b, served by a node on a: when b dies, a takes b's inbox over in
    // both cells, and the session resumes on a and gets the result the node sent after the
    // crash (a takeover drops session messages from the dead inbox: the result log resends
    // them).
    let globex_node = token(&[Scope::Node], None, Some("globex"));
    let (mut n, nid) = node_as(&a, &globex_node, None).await;
    let globex = token(&[Scope::Session], None, Some("globex"));
    let (mut s, ack) = open_session_ack(
        &url_as(&b, "/ws/session", &globex),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    s.send(&utterance(&sid, 0)).await;
    let job = assign(&mut n).await;
    for prefix in [EU, US] {
        let present: Vec<String> = c.zrange(format!("{prefix}instances"), 0, -1).await.unwrap();
        assert!(present.contains(&dead), "{prefix}: {present:?}");
    }
    b.abort();
    s.drop_connection();
    n.send(&answer(&job, &nid, "after the crash")).await;
    for prefix in [EU, US] {
        eventually(
            Duration::from_secs(5),
            "takeover of the dead instance",
            || {
                let mut c = c.clone();
                let dead = dead.clone();
                async move {
                    let present: Vec<String> =
                        c.zrange(format!("{prefix}instances"), 0, -1).await.ok()?;
                    (!present.contains(&dead)).then_some(())
                }
            },
        )
        .await;
    }
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = ack["resume_token"].clone();
    init["last_received_index"] = json!(-1);
    let (mut s, ack) = open_session_ack(&url_as(&a, "/ws/session", &globex), init).await;
    assert_eq!(ack["resumed"], true, "{ack}");
    let t = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(t[0]["type"], "translation_result", "{t:?}");
    assert!(
        a.app.metrics.takeovers.get() >= 2,
        "one takeover per cell, got {}",
        a.app.metrics.takeovers.get()
    );
    invariants::check(&mut c).await;
}

#[test]
fn configuration_refuses_ambiguous_cells() {
    let mut cfg = common::test_config("redis://127.0.0.1:1");
    two_cells(&mut cfg);
    assert!(cfg.validate().is_ok());
    cfg.cells[1].default = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("cells.default"), "{e}");
    cfg.cells[1].default = false;
    cfg.cells[1].tenants.push("acme".into());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("cells.tenants"), "{e}");
}

/// Review finding: a `node_register` refused for its capabilities still pinned the
/// connection to the cell of the tenant it named, so a corrected register for a tenant of
/// another cell was refused on that connection. Only open mode lets a frame name the
/// tenant (a credential's tenant fixes the cell otherwise).
#[tokio::test]
async fn a_refused_register_does_not_pin_the_connection_to_a_cell() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        two_cells(c);
        c.auth.mode = "open".into();
    })
    .await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&bare_ws_url(&inst, "/ws/node")).await;
    let mut bad = fixture("node_register_first");
    bad["tenant_id"] = json!("globex");
    bad["max_concurrent_jobs"] = json!(0);
    n.send(&bad).await;
    let e = n.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_CAPABILITY_SCHEMA", "{e}");
    let mut good = fixture("node_register_first");
    good["tenant_id"] = json!("acme");
    n.send(&good).await;
    let ack = n.next(Duration::from_secs(5)).await.expect("a reply");
    assert_eq!(ack["type"], "node_register_ack", "{ack}");
    let nid = ack["node_id"].as_str().expect("node_id");
    assert!(
        exists(&mut c, format!("{EU}node:{nid}")).await,
        "in acme's cell"
    );
    invariants::check(&mut c).await;
}

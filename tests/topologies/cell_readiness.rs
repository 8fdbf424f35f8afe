//! Readiness of instances serving two cells on two primaries of a Redis Cluster when one
//! primary stops answering (SIGSTOP): with `instance.ready_when = "any_cell"` (the default)
//! the instance stays ready, names the cell under `degraded`, and the other cell keeps
//! serving; with `"every_cell"` it turns unready. Both are ready again, with nothing
//! degraded, once the primary answers again.

use super::*;
use switchyard::config::ReadyWhen;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cell_down_leaves_the_other_cells_ready_and_serving() {
    // 30 s before a failover: the stopped primary stays the cell's primary throughout.
    let mut cluster = Cluster::start_steady().await;
    let ranges: Vec<Vec<(u16, u16)>> = cluster.slot_map().await.into_values().collect();
    let names = switchyard::config::cell::spread_names("switchyard", "cell", 2, &ranges);
    let cells = cells_of(&names);
    let any = start_with(cfg(RedisMode::Cluster, cluster.urls(), cells)).await;
    let every = start_with(cfg(RedisMode::Cluster, cluster.urls(), |c| {
        cells(c);
        c.instance.ready_when = ReadyWhen::EveryCell;
    }))
    .await;
    let whole = |inst: &Running| {
        let url = http_url(inst, "/readyz");
        async move {
            until(T, "ready, nothing degraded", || async {
                let (status, body) = get_json(&url).await;
                status == 200 && body["degraded"] == serde_json::json!([])
            })
            .await
        }
    };
    for inst in [&any, &every] {
        whole(inst).await;
    }
    let t0 = token(&[Scope::Node], None, Some(&tenant(0)));
    let node_url = with_given_token(&bare_ws_url(&any, "/ws/node"), &t0);
    let node = AutoNode::start(
        &node_url,
        fixture("node_register_first"),
        Duration::from_millis(5),
    )
    .await;

    let down = &names[1];
    let tag = format!("{{switchyard:{down}}}:");
    let port = cluster
        .primary_of(cluster.slot(&tag).await)
        .await
        .expect("the cell's primary");
    let up_tag = format!("{{switchyard:{}}}:", names[0]);
    let up_port = cluster.primary_of(cluster.slot(&up_tag).await).await;
    assert_ne!(Some(port), up_port, "the two cells on two primaries");
    cluster.node(port).signal("STOP");

    let any_url = http_url(&any, "/readyz");
    until(T, "any_cell: ready, the stopped cell degraded", || async {
        let (status, body) = get_json(&any_url).await;
        status == 200 && body["degraded"][0]["cell"] == down.as_str()
    })
    .await;
    let (status, body) = get_json(&http_url(&any, "/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let degraded = body["degraded"].as_array().expect("degraded");
    assert_eq!(degraded.len(), 1, "only the stopped cell: {body}");
    let every_url = http_url(&every, "/readyz");
    until(
        T,
        "every_cell: unready, naming the stopped cell",
        || async {
            let (status, body) = get_json(&every_url).await;
            let reason = body["reason"].as_str().unwrap_or_default().to_string();
            status == 503 && reason.starts_with(&format!("cell {down}:"))
        },
    )
    .await;

    // The other cell serves on, from the instance that stayed ready.
    tenant_jobs_flow(&any, 0, 3).await;
    assert_eq!(node.jobs(), 3);

    cluster.node(port).signal("CONT");
    for inst in [&any, &every] {
        whole(inst).await;
    }
    for p in [port, up_port.expect("primary")] {
        let mut direct = connect(&format!("redis://127.0.0.1:{p}"))
            .await
            .expect("primary");
        invariants::check(&mut direct).await;
    }
}

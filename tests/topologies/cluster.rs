//! A 3-primary 3-replica Redis Cluster: cells spread one per primary, nodes, jobs and
//! instances surviving a primary's SIGKILL, the documented ACL user, and a reply lost on the way
//! recovered once.

use super::*;

/// Three cells named by slot spread, one per primary of the cluster: each tenant's nodes and
/// sessions work in their own cell, on their own primary, from either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cells_spread_over_the_cluster_primaries() {
    let cluster = Cluster::start().await;
    let ranges: Vec<Vec<(u16, u16)>> = cluster.slot_map().await.into_values().collect();
    let names = switchyard::config::cell::spread_names("switchyard", "cell", 3, &ranges);
    // `switchyard cell-names` prints the same names from the live slot map, as TOML.
    let urls = serde_json::to_string(&cluster.urls()).expect("json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["cell-names", "--count", "3"])
        .env(secret_env().0, secret_env().1)
        .env("SWITCHYARD_REDIS__MODE", "cluster")
        .env("SWITCHYARD_REDIS__URLS", &urls)
        .output()
        .expect("cell-names runs");
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{toml} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[derive(serde::Deserialize)]
    struct Printed {
        cells: Vec<switchyard::config::CellSpec>,
    }
    use figment::providers::Format;
    let parsed: Printed = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .expect("valid [[cells]] TOML");
    let printed: Vec<String> = parsed.cells.iter().map(|c| c.name.clone()).collect();
    assert_eq!(printed, names, "{toml}");
    assert!(parsed.cells[0].default && !parsed.cells[1].default);
    let cells = cells_of(&names);
    let a = start_with(cfg(RedisMode::Cluster, cluster.urls(), cells)).await;
    let b = start_with(cfg(RedisMode::Cluster, cluster.urls(), cells)).await;
    let mut nodes = Vec::new();
    for i in 0..names.len() {
        let t = token(&[Scope::Node], None, Some(&tenant(i)));
        let url = with_given_token(&bare_ws_url(&a, "/ws/node"), &t);
        let delay = Duration::from_millis(5);
        nodes.push(AutoNode::start(&url, fixture("node_register_first"), delay).await);
    }
    let mut primaries = std::collections::BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        tenant_jobs_flow(&b, i, 3).await;
        let tag = format!("{{switchyard:{name}}}:");
        let port = cluster
            .primary_of(cluster.slot(&tag).await)
            .await
            .expect("owner");
        primaries.insert(port);
        let mut direct = connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .expect("cell primary");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{tag}*"))
            .query_async(&mut direct)
            .await
            .expect("keys");
        assert!(
            keys.iter().any(|k| k.contains(":session:")) && keys.len() > 5,
            "cell {name} lives on primary {port}: {keys:?}"
        );
        invariants::check(&mut direct).await;
    }
    assert_eq!(primaries.len(), 3, "one cell per primary: {names:?}");
    let served: Vec<usize> = nodes.iter().map(AutoNode::jobs).collect();
    assert_eq!(
        served,
        [3, 3, 3],
        "each node served its own cell's utterances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_nodes_jobs_instances_and_survives_a_primary_kill() {
    let mut cluster = Cluster::start().await;
    let a = start_with(cfg(RedisMode::Cluster, cluster.urls(), |_| {})).await;
    let b = start_with(cfg(RedisMode::Cluster, cluster.urls(), |_| {})).await;
    // Node on A, session on B: every delivery crosses the inbox streams.
    let node = auto_node(&a).await;
    jobs_flow(&b, 5).await;
    jobs_flow(&a, 3).await;
    let slot = cluster.slot(&format!("{PREFIX}x")).await;
    let port = cluster.primary_of(slot).await.expect("slot owner");
    let mut direct = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("cell primary");
    invariants::check(&mut direct).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query_async(&mut direct)
        .await
        .expect("keys");
    assert!(keys.len() > 5, "the cell lives on its slot's primary");
    // Reads that pipeline several keys of the cell (admin API, /metrics) work on a cluster.
    let (status, nodes) = get_json(&http_url(&a, "/api/v1/nodes")).await;
    assert_eq!(status, 200, "{nodes}");
    assert!(nodes.to_string().contains(&node.id), "{nodes}");
    let m = metrics_text(&b).await;
    assert!(
        m.contains("switchyard_nodes{cell=\"main\",state=\"ready\"} 1"),
        "{m}"
    );

    // Cell tags: our CRC16 agrees with the cluster, and names picked by slot spread evenly
    // over the three primaries of the live slot map (names picked by hand need not).
    assert_eq!(switchyard::config::cell::slot(&format!("{PREFIX}x")), slot);
    let map = cluster.slot_map().await;
    let ranges: Vec<Vec<(u16, u16)>> = map.values().cloned().collect();
    let owner = |name: &str| {
        let s = switchyard::config::cell::slot(&format!("{{switchyard:{name}}}"));
        ranges
            .iter()
            .position(|r| r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s)))
            .expect("owned slot")
    };
    let picked = switchyard::config::cell::spread_names("switchyard", "cell", 6, &ranges);
    let mut per = vec![0; ranges.len()];
    for n in &picked {
        per[owner(n)] += 1;
    }
    assert_eq!(per, vec![2, 2, 2], "{picked:?}");
    let naive: Vec<usize> = ["eu", "us", "asia", "cell-a", "cell-b", "cell-c"]
        .iter()
        .map(|n| owner(n))
        .collect();
    eprintln!(
        "cell names by slot {picked:?} -> primaries {per:?}; hand-picked names -> primary index {naive:?}"
    );

    // Kill the primary holding the cell: its replica takes over.
    let (ready, watcher) = watch_readyz(&b);
    let load = Load::start(&b, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.node(port).kill9();
    let killed = Instant::now();
    let new_port = loop {
        match cluster.primary_of(slot).await {
            Some(p) if p != port => break p,
            _ => {}
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let promoted = Instant::now();
    until(Duration::from_secs(5), "a write after the takeover", || {
        let after = load
            .acked
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _)| *t > promoted);
        async move { after }
    })
    .await;
    let recovered = promoted.elapsed();
    let (acked, failed) = load.stop();
    let ready_again = ready_after(&ready, promoted).await;
    watcher.abort();
    eprintln!(
        "cluster failover: takeover seen {:?} after the kill; first write {recovered:?} after it; \
         /readyz ready again {ready_again:?} after it; {} acknowledged, {failed} refused",
        promoted.duration_since(killed),
        acked.len()
    );
    assert!(recovered < Duration::from_secs(5));
    assert!(ready_again.is_some_and(|d| d < Duration::from_secs(5)));
    jobs_flow(&b, 2).await;
    let mut direct = connect(&format!("redis://127.0.0.1:{new_port}"))
        .await
        .expect("new cell primary");
    // Node records and pools are consistent on the promoted replica too.
    invariants::check(&mut direct).await;
    node.stop();
}

/// The Redis ACL user docs/operations.md gives, with the one cluster command it names for a
/// Redis Cluster (`CLUSTER SLOTS`), is enough for an instance there: jobs, the admin reads and
/// `/metrics` run as that user, and no node's `ACL LOG` holds a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_on_a_cluster() {
    const RULES: &str = "~{switchyard:*}* resetchannels -@all +@read +@write +@stream \
        +@scripting -@dangerous +role +info +wait +time +ping +hello +client|setname \
        +multi +exec +discard +unwatch +cluster|slots";
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("operations.md");
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat(&docs).contains("add `+cluster|slots`"),
        "docs/operations.md names other cluster commands"
    );
    let cluster = Cluster::start_steady().await;
    for n in &cluster.nodes {
        acl_user(&mut n.client().await, RULES).await;
    }
    let inst = start_with(cfg(RedisMode::Cluster, cluster.urls(), |c| {
        c.redis.username = Some("switchyard".into());
        c.redis.password = Some("acl-test-password".into());
    }))
    .await;
    let _node = auto_node(&inst).await;
    let (mut s, sid) = session_on(&inst).await;
    for u in 0..3 {
        s.send(&utterance(&sid, u)).await;
    }
    let got = terminals(&mut s, 3, T).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
    admin_reads_ok(
        &inst,
        &["/api/v1/nodes", "/api/v1/pools", "/readyz", "/metrics"],
    )
    .await;
    for n in &cluster.nodes {
        let mut c = n.client().await;
        let refused: Vec<redis::Value> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut c)
            .await
            .expect("acl log");
        assert!(
            refused.is_empty(),
            "{}: commands refused: {refused:?}",
            n.addr()
        );
    }
}

/// On a Redis Cluster, a `job_result` whose reply was lost (the cell's primary busy past
/// `redis.timeout_ms`; it commits after the call gave up) is ambiguous: the node is told
/// Redis is away, and the session's result is read back from the log, once (the lost-reply
/// recovery ran only on one redis-server in the tests before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_cluster_is_recovered_once() {
    let cluster = Cluster::start_steady().await;
    let inst = start_with(cfg(RedisMode::Cluster, cluster.urls(), |c| {
        c.redis.timeout_ms = 500;
    }))
    .await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    let port = cluster
        .primary_of(switchyard::config::cell::slot("{switchyard:main}"))
        .await
        .expect("the cell's primary");
    let primary = connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect("primary");
    // busy 800 ms: the call times out at 500, and runs after the spin
    spin(primary, 800).await;
    n.send(&answer(&job, &nid, "once")).await;
    let err = next_of(&mut n, "error", T).await.expect("the node is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (&got[0]["type"], &got[0]["utterance_index"]),
        (
            &serde_json::json!("translation_result"),
            &serde_json::json!(0)
        )
    );
    assert!(
        next_of(&mut s, "translation_result", Duration::from_millis(500))
            .await
            .is_none(),
        "a second copy"
    );
}

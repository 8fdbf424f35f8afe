//! `/metrics` under many scrapers, against a real redis-server: the cell-wide gauges are
//! read from Redis at most once per `telemetry.metrics_refresh_ms` however many scrapes
//! arrive (it needs no token on `listen`), and concurrent scrapes never see the pool
//! series half cleared.

use crate::common::invariants::PREFIX;
use crate::common::*;

/// 2,000 node records (offline, expiring in an hour so no sweep touches them) make one
/// refresh cost 2,000 `HGET`s. 100 concurrent unauthenticated scrapes must cost about one
/// refresh, not one each (before: ~200,000 `HGET`s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_one_redis_refresh() {
    if single_only("counts the commands of one redis-server") {
        return;
    }
    const NODES: u64 = 2_000;
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let expires = switchyard::protocol::now_ms() + 3_600_000;
    let mut pipe = redis::pipe();
    for i in 0..NODES {
        let id = format!("node-SEED{i:05}");
        pipe.cmd("HSET")
            .arg(format!("{PREFIX}node:{id}"))
            .arg("id")
            .arg(&id)
            .arg("state")
            .arg("offline")
            .ignore();
        pipe.cmd("ZADD")
            .arg(format!("{PREFIX}nodes:index"))
            .arg(expires)
            .arg(&id)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.expect("seed nodes");
    let before = command_calls(&mut c, "hget").await;
    let http = reqwest::Client::new();
    let url = http_url(&inst, "/metrics");
    let scrapes = (0..100).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let resp = http.get(&url).send().await.expect("scrape");
            assert_eq!(resp.status().as_u16(), 200);
            resp.text().await.expect("body")
        })
    });
    for s in futures_util::future::join_all(scrapes).await {
        let text = s.expect("scrape task");
        assert!(
            text.contains(&format!(
                "switchyard_nodes{{cell=\"main\",state=\"offline\"}} {NODES}"
            )),
            "every scrape shows the refreshed count"
        );
    }
    let spent = command_calls(&mut c, "hget").await - before;
    assert!(
        spent <= 3 * NODES,
        "100 scrapes cost {spent} HGETs: more than 3 refreshes of {NODES} nodes"
    );
}

/// Two scrapers in a loop: while a pool exists, every scrape shows its `queue_depth` and
/// `pool_nodes` series (before, a scrape could encode while the other one had cleared the
/// families and was awaiting Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_scrapes_always_see_the_pool_series() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.telemetry.metrics_refresh_ms = 0).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let _id = node.register_id(fixture("node_register_first"), None).await;
    let url = http_url(&inst, "/metrics");
    let scraper = |url: String| {
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut missing = 0;
            for _ in 0..300 {
                let text = http
                    .get(&url)
                    .send()
                    .await
                    .expect("scrape")
                    .text()
                    .await
                    .expect("body");
                let pool = r#"{cell="main",pool="pub:zh:en"}"#;
                if !text.contains(&format!("switchyard_queue_depth{pool} "))
                    || !text.contains(&format!("switchyard_pool_nodes{pool} 1"))
                {
                    missing += 1;
                }
            }
            missing
        })
    };
    let (a, b) = (scraper(url.clone()), scraper(url));
    let (a, b) = (a.await.expect("scraper a"), b.await.expect("scraper b"));
    assert_eq!((a, b), (0, 0), "scrapes without the pool series");
}

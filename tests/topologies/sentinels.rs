//! Asking the sentinels: a sentinel that accepts connections and never answers (a hung
//! pod; the primary's pod often carries one) costs no wait while another answers.

use super::*;

/// Review finding: the sentinels were asked one after another, and each failing call that
/// queued behind a re-resolution asked again (the answer was stamped before asking): with
/// the first listed sentinel hung, every resolution waited `redis.timeout_ms` for it, once
/// per queued call. They are now asked at once, and a fresh answer is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sentinel_listed_first_costs_no_wait() {
    let set = SentinelSet::start(0, &[]).await;
    // Accepts connections, never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("redis://{}", hung.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            socks.push(s);
        }
    });
    let mut urls = vec![hung_url];
    urls.extend(set.sentinel_urls());
    let started = Instant::now();
    let inst = start_with(cfg(RedisMode::Sentinel, urls, |c| {
        c.redis.timeout_ms = 3_000
    }))
    .await;
    until(Duration::from_secs(10), "ready", || async {
        get_json(&http_url(&inst, "/readyz")).await.0 == 200
    })
    .await;
    let ready = started.elapsed();
    // 20 session opens at once, each a script call through the resolved primary.
    let opens = (0..20).map(|_| {
        let url = ws_url(&inst, "/ws/session");
        async move { open_session(&url, fixture("session_init_one_way")).await }
    });
    let t = Instant::now();
    futures_util::future::join_all(opens).await;
    eprintln!(
        "ready {ready:?} with a hung sentinel first; 20 opens {:?}",
        t.elapsed()
    );
    assert!(
        ready < Duration::from_millis(2_500),
        "the instance waited for the hung sentinel ({ready:?}; its timeout is 3 s)"
    );
    held.abort();
}

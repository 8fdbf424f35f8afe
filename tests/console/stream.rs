//! The console's live stream (`/api/v1/console/stream`) against a real redis-server and
//! real HTTP clients: it ends at its token's `exp` (the token is checked once, at
//! connect), and at most `limits.max_console_streams` run per instance,
//! `limits.max_console_streams_per_credential` of one credential holder.

use std::time::Duration;

use crate::common::*;

/// GET the stream with `token` in `?access_token=` (as the dashboard's EventSource does).
async fn open(inst: &switchyard::server::Running, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(with_given_token(
            &http_url(inst, "/api/v1/console/stream"),
            token,
        ))
        .send()
        .await
        .expect("stream")
}

/// A token valid for ~2 s: the stream sends `event: expired` and ends within ~4 s
/// (before, it ran on until the instance drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ends_when_its_token_expires() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let started = std::time::Instant::now();
    let mut resp = open(&inst, &short_token(&[Scope::AdminRead], 2)).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = resp.chunk().await.expect("body") {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream still runs {:?} after its token expired: {body}",
        started.elapsed()
    );
    assert!(
        body.contains("\"nodes\""),
        "snapshots before the end: {body}"
    );
    assert!(
        body.contains("event: expired"),
        "a last event says why: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{body}");
    // A token past its exp but within `auth.leeway_s` still opens a stream: it ends at
    // once, before any snapshot.
    let mut again = open(&inst, &short_token(&[Scope::AdminRead], 0)).await;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = again.chunk().await.expect("body") {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("an expired token's stream ends at once");
    assert!(
        body.contains("event: expired") && !body.contains("\"nodes\""),
        "{body}"
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// `limits.max_console_streams = 2`: a third stream gets 503 with a JSON error; once one
/// closes, a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_get_503() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_console_streams = 2).await;
    let read = token(&[Scope::AdminRead], None, None);
    let a = open(&inst, &read).await;
    let _b = open(&inst, &read).await;
    assert_eq!((a.status().as_u16(), _b.status().as_u16()), (200, 200));
    let refused = open(&inst, &read).await;
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await.expect("json error");
    assert_eq!(body["error"], "too many console streams", "{body}");
    // The snapshot endpoint is not a stream: it still answers.
    let (status, _) = get_json(&http_url(&inst, "/api/v1/console/snapshot")).await;
    assert_eq!(status, 200);
    drop(a);
    eventually(
        Duration::from_secs(5),
        "a stream slot to free up",
        || async {
            let r = open(&inst, &read).await;
            (r.status().as_u16() == 200).then_some(())
        },
    )
    .await;
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="console",detail="streams"} "#),
        "{text}"
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// Resource audit: the streams were capped per instance only, so one `admin:read` token
/// could hold every slot until its `exp`. `limits.max_console_streams_per_credential = 2`:
/// a holder's third stream gets 429; another holder is still served; a closed stream gives
/// its holder's slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_holds_at_most_its_streams() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_console_streams_per_credential = 2).await;
    let alice = token(&[Scope::AdminRead], Some("ops-alice"), None);
    let a = open(&inst, &alice).await;
    let _a2 = open(&inst, &alice).await;
    assert_eq!((a.status().as_u16(), _a2.status().as_u16()), (200, 200));
    let refused = open(&inst, &alice).await;
    assert_eq!(refused.status().as_u16(), 429);
    let body: serde_json::Value = refused.json().await.expect("json error");
    assert_eq!(
        body["error"], "too many console streams for this credential",
        "{body}"
    );
    let bob = token(&[Scope::AdminRead], Some("ops-bob"), None);
    assert_eq!(open(&inst, &bob).await.status().as_u16(), 200);
    drop(a);
    eventually(Duration::from_secs(5), "alice's slot back", || async {
        let r = open(&inst, &alice).await;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    let text = metrics_text(&inst).await;
    let limited = r#"switchyard_limited_total{kind="console",detail="streams_per_credential"}"#;
    assert!(sample(&text, limited).is_some_and(|v| v >= 1.0), "{text}");
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// Admin requests beyond `limits.max_admin_requests` in flight get HTTP 429 at once (before,
/// every one waited for a pooled Redis connection: a loop of reads held the pool `/readyz`
/// and recovery need); the console stream has its own limits and is not counted. Admin
/// responses are never cached or sniffed; HEAD is a read (console audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_beyond_the_limit_get_429_and_the_stream_is_not_counted() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_admin_requests = 2).await;
    let read = token(&[Scope::AdminRead], Some("ops"), None);
    let get = |path: &str| {
        reqwest::Client::new()
            .get(http_url(&inst, path))
            .bearer_auth(&read)
            .send()
    };
    // Redis paused: two reads wait on it, holding both places
    let mut c = redis.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_500)
        .arg("ALL")
        .query_async(&mut c)
        .await
        .expect("pause");
    let held = futures_util::future::join_all([get("/api/v1/nodes"), get("/api/v1/pools")]);
    let third = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = get("/api/v1/instances").await.expect("third");
        let stream = open(&inst, &read).await;
        (r, stream.status().as_u16())
    };
    let (_, (r, stream)) = tokio::join!(held, third);
    assert_eq!(r.status().as_u16(), 429, "a third read while two wait");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(stream, 200, "the stream is not counted");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = get("/api/v1/nodes").await.expect("after");
    assert_eq!(r.status().as_u16(), 200, "places free once the reads end");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let write = token(&[Scope::AdminWrite], Some("ops-w"), None);
    let head = |t: &str| {
        reqwest::Client::new()
            .head(http_url(&inst, "/api/v1/nodes"))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(head(&read).await.expect("head").status().as_u16(), 200);
    assert_eq!(
        head(&write).await.expect("head").status().as_u16(),
        403,
        "admin:write does not imply admin:read"
    );
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="admin",detail="requests"} 1"#),
        "{text}"
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// The snapshot lists at most 500 nodes, the live ones first: with more recently offline
/// records than that, a live node still shows (before, the ascending read of `nodes:index`
/// listed the soonest to expire, offline ones first). A pool's load counts every ready
/// member (console audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_lists_live_nodes_before_offline_records() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let p = crate::common::invariants::PREFIX;
    // (offline records expire within the retention, 5 s here; a live node's liveness is ahead)
    let soon = switchyard::protocol::now_ms() + 3_000;
    let mut pipe = redis::pipe();
    for i in 0..600 {
        let id = format!("gone-{i}");
        pipe.hset_multiple(
            format!("{p}node:{id}"),
            &[("id", id.as_str()), ("state", "offline")],
        )
        .ignore()
        .pexpire(format!("{p}node:{id}"), 60_000)
        .ignore()
        .zadd(format!("{p}nodes:index"), &id, soon)
        .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("seed");
    let (_n, nid) = crate::common::actors::node_on(&inst, None).await;
    let snap: serde_json::Value = reqwest::Client::new()
        .get(http_url(&inst, "/api/v1/console/snapshot"))
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("json");
    let nodes = snap["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 500);
    assert_eq!(nodes[0]["id"], nid.as_str(), "the live node first");
    let pool = &snap["pools"][0];
    assert_eq!(pool["members_total"], 1, "{pool}");
    assert!(pool["capacity"].as_u64().is_some_and(|c| c > 0), "{pool}");
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// Snapshots of ~800 KB (120 pools with 100 long member names): they fill the socket's
/// buffers (~2.8 MB here, with a 4 KB receive buffer on the client) within ~4 s. A stream
/// with `token` of the holder `ops-stuck` (whose one slot it takes), read up to its
/// response's first bytes and no further; then `check` (the instance and the holder's
/// token), and what the scenario added leaves Redis.
async fn unread_stream<F: std::future::Future<Output = ()>>(
    tweak: impl FnOnce(&mut switchyard::config::Config),
    token_ttl_s: u64,
    check: impl FnOnce(switchyard::server::Running, String) -> F,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.max_console_streams_per_credential = 1;
        tweak(c);
    })
    .await;
    let mut c = redis.client().await;
    let prefix = crate::common::invariants::PREFIX;
    let pools: Vec<String> = (0..120).map(|p| format!("pub:x{p:03}:y")).collect();
    let mut w = redis::pipe();
    for p in &pools {
        let members: Vec<String> = (0..100)
            .map(|m| format!("{p}-{m:03}-{}", "m".repeat(48)))
            .collect();
        w.sadd(format!("{prefix}pool:{p}"), members).ignore();
    }
    w.sadd(format!("{prefix}pools"), &pools).ignore();
    let () = w.query_async(&mut c).await.unwrap();

    let stuck = short_token_of(&[Scope::AdminRead], "ops-stuck", token_ttl_s);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = sock.connect(inst.addr).await.expect("connect");
    let get =
        format!("GET /api/v1/console/stream?access_token={stuck} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.expect("request");
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut head))
        .await
        .expect("a response")
        .expect("read");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let fresh = token(&[Scope::AdminRead], Some("ops-stuck"), None);
    assert_eq!(
        open(&inst, &fresh).await.status().as_u16(),
        429,
        "the unread stream holds its holder's one slot"
    );
    check(inst, fresh).await;
    drop(tcp);
    let mut w = redis::pipe();
    for p in &pools {
        w.del(format!("{prefix}pool:{p}")).ignore();
    }
    w.srem(format!("{prefix}pools"), &pools).ignore();
    let () = w.query_async(&mut c).await.unwrap();
    crate::common::invariants::check(&mut c).await;
}

/// A client that stops reading: the server writes nothing more once the socket's buffers
/// are full, and so no longer asked the stream for its next event, where the stream checked
/// its token's `exp`: it kept its slots, its holder's included, for ever (console audit).
/// Its events now come from a task of their own that ends at `exp` whether or not the
/// client reads (the buffers are full within ~4 s, before the token's 7 s are over; the
/// connection's write timeout, 30 s, is not what frees the slot here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_ends_at_its_tokens_exp() {
    unread_stream(
        |_| {},
        7,
        |inst, fresh| async move {
            eventually(
                Duration::from_secs(8),
                "the slot back after exp",
                || async {
                    let r = open(&inst, &fresh).await;
                    (r.status().as_u16() == 200).then_some(())
                },
            )
            .await;
        },
    )
    .await;
}

/// The same client, with a token for an hour: its connection, whose write has waited past
/// `limits.http_write_timeout_ms` (1 s here) for it to read, is closed, and the stream with
/// it (before, the connection and its slot in `limits.max_http_connections` stayed for as
/// long as the client kept the socket open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_client_stopped_reading_is_closed() {
    let tweak = |c: &mut switchyard::config::Config| c.limits.http_write_timeout_ms = 1_000;
    unread_stream(tweak, 3_600, |inst, fresh| async move {
        let closed = r#"switchyard_limited_total{kind="http",detail="write_timeout"}"#;
        eventually(
            Duration::from_secs(10),
            "the stalled connection closed",
            || async { sample(&metrics_text(&inst).await, closed).filter(|n| *n >= 1.0) },
        )
        .await;
        eventually(Duration::from_secs(5), "the slot back", || async {
            let r = open(&inst, &fresh).await;
            (r.status().as_u16() == 200).then_some(())
        })
        .await;
    })
    .await;
}

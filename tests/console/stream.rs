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
}

//! The operator console against a real redis-server: a job's attempts and routing
//! explanation (`GET /api/v1/jobs/{id}` and `switchyard inspect job`), a session's view and
//! job list, the dashboard's snapshot and SSE stream (token in `?access_token=`), and the
//! admin token every console route needs (`explain`: routing explanations; `stream`: the live
//! stream's end at its token's `exp` and its cap). Every scenario ends with the invariant
//! checker.

mod common;

use std::time::Duration;

use common::actors::*;
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

async fn node(inst: &switchyard::server::Running) -> (WsClient, String) {
    let mut n = WsClient::connect(&ws_url(inst, "/ws/node")).await;
    let id = n.register_id(fixture("node_register_first"), None).await;
    (n, id)
}

async fn post(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_session_shows_its_state_results_and_jobs() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    for i in 0..2 {
        s.send(&utterance(&sid, i)).await;
        let a = assign(&mut n).await;
        n.send(&answer(&a, &nid, &format!("T{i}"))).await;
    }
    terminals(&mut s, 2, T).await;
    let (st, v) = get_json(&http_url(&inst, &format!("/api/v1/sessions/{sid}"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["session"]["state"], "open");
    assert_eq!(v["session"]["owner"], inst.app.instance_id.as_str());
    assert!(
        v["session"].get("resume_hash").is_none(),
        "secrets stay out: {v}"
    );
    assert_eq!(v["results"][1]["text_translated"], "T1", "{v}");
    let (st, j) = get_json(&http_url(&inst, &format!("/api/v1/sessions/{sid}/jobs"))).await;
    assert_eq!(st, 200);
    assert_eq!(j["jobs"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["jobs"][0]["state"], "FINISHED");
    assert_eq!(j["jobs"][0]["node"], nid.as_str());
    let (st, _) = get_json(&http_url(&inst, "/api/v1/jobs/job-nope-0")).await;
    assert_eq!(st, 404);
    // a session nobody has: no jobs, and no cell claimed for it (console audit)
    let (st, j) = get_json(&http_url(&inst, "/api/v1/sessions/s-NOPE0000/jobs")).await;
    assert_eq!(st, 200);
    assert_eq!(j["jobs"], serde_json::json!([]), "{j}");
    assert!(j["cell"].is_null(), "{j}");

    // The same from the command line, reading Redis directly: no key configured (it
    // verifies no token), the record's own field names, `--json` after the target too.
    let (ok, text, err) = inspect(&redis, &["session", &sid]);
    assert!(ok, "{text} {err}");
    for (field, value) in [("state", "open"), ("src", "zh"), ("tgt", "en")] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [field, value]),
            "{field} {value}: {text}"
        );
    }
    let (ok, text, err) = inspect(&redis, &["session", &sid, "--json"]);
    assert!(ok, "{text} {err}");
    let v: Value = serde_json::from_str(&text).expect("inspect --json prints JSON");
    assert_eq!(v["session"]["src"], "zh", "{v}");
    common::invariants::check(&mut c).await;
}

/// `switchyard inspect <args>` against `redis`, with no auth setting in its environment:
/// (success, stdout, stderr).
fn inspect(redis: &RedisServer, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("inspect")
        .args(args)
        .env("SWITCHYARD_REDIS__URL", redis.url())
        .env_remove("SWITCHYARD_AUTH__HS256_SECRETS")
        .env_remove("SWITCHYARD_AUTH__MODE")
        .output()
        .expect("run switchyard inspect");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn the_console_needs_an_admin_token_but_the_page_does_not() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let (_n, nid) = node(&inst).await;
    let http = reqwest::Client::new();
    for path in [
        "/api/v1/jobs/x",
        "/api/v1/sessions/x",
        "/api/v1/console/stream",
    ] {
        let r = http.get(http_url(&inst, path)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let session_token = token(&[Scope::Session], None, None);
    let r = http
        .get(http_url(&inst, "/api/v1/console/snapshot"))
        .bearer_auth(&session_token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 403);
    let page = http
        .get(http_url(&inst, "/dashboard"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap_or_default().contains("<html"));
    // EventSource cannot set headers: the stream takes the token as ?access_token=.
    let read = token(&[Scope::AdminRead], None, None);
    let mut resp = http
        .get(with_given_token(
            &http_url(&inst, "/api/v1/console/stream"),
            &read,
        ))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = tokio::time::timeout(T, resp.chunk())
            .await
            .expect("event in time");
        buf.push_str(&String::from_utf8_lossy(
            &chunk.expect("body").expect("chunk"),
        ));
    }
    let data = buf
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .expect("data line");
    let snap: Value = serde_json::from_str(data.trim()).expect("json");
    assert!(
        snap["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["id"] == nid.as_str())
    );
    assert_eq!(
        snap["series"]["done_per_s"].as_array().map(Vec::len),
        Some(60)
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

#[path = "console/explain.rs"]
mod explain;

#[path = "console/stream.rs"]
mod stream;

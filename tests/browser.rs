//! The dashboard in a real browser: headless Chromium (Debian's `chromium` +
//! `chromium-driver`, installed by `make test-deps`) driven over WebDriver. It loads
//! `/dashboard`, takes an admin token like an operator would, sees a node that registers
//! during the test appear, drains it with the page's button and sees it turn draining,
//! and opens the explanation of a job that failed over from the search box.
//!
//! With `SWITCHYARD_SCREENSHOTS=1` it also writes the screenshots of docs/operations.md
//! to docs/img/.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::actors::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// chromedriver on a free port, killed on drop; its browser profile in a fresh temp dir.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("chromedriver not runnable ({e}): `make test-deps` installs chromium and chromium-driver")
        });
    let profile = tempfile::tempdir().expect("profile dir");
    Driver {
        child,
        port,
        profile,
    }
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--window-size=1400,1000",
            format!("--user-data-dir={}", d.profile.path().display())]}),
    );
    let url = format!("http://127.0.0.1:{}", d.port);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("no WebDriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The text of the first element matching `css`, once `pred` holds for it.
async fn wait_text(c: &Client, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    eventually(T, what, || async {
        let e = c.find(Locator::Css(css)).await.ok()?;
        let t = e.text().await.ok()?;
        pred(&t).then_some(t)
    })
    .await
}

/// Click the element with id `id`.
async fn click(c: &Client, id: &str) {
    (c.find(Locator::Id(id)).await)
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

async fn shot(c: &Client, name: &str) {
    if std::env::var("SWITCHYARD_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let png = c.screenshot().await.expect("screenshot");
        let path = format!("{}/docs/img/{name}.png", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[tokio::test]
async fn the_dashboard_shows_a_new_node_its_drain_and_a_job_explanation() {
    let redis = RedisServer::start().await;
    // The test's node does not heartbeat: keep it live for the whole test.
    let inst = start_tweaked(&redis, |c| {
        c.node.liveness_ms = Some(120_000);
        c.jobs.run_timeout_ms = 800;
    })
    .await;
    let driver = chromedriver();
    let c = browser(&driver).await;
    c.goto(&http_url(&inst, "/dashboard"))
        .await
        .expect("open page");
    c.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(&admin_token())
        .await
        .expect("type token");
    click(&c, "save").await;
    wait_text(&c, "#status", "the stream to be live", |t| {
        t.starts_with("live")
    })
    .await;

    // A node registers while the page is open, and takes a job.
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let row = format!("tr[data-node=\"{nid}\"] td.state");
    wait_text(&c, &row, "the new node to appear as ready", |t| {
        t == "ready"
    })
    .await;
    // A second node; the first attempt's node stays silent, so the job fails over and its
    // explanation has two attempts.
    let mut m = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mid = m.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let (second, second_id) = tokio::select! {
        Some(_) = next_of(&mut n, "job_assign", T) => (&mut m, mid.clone()),
        Some(_) = next_of(&mut m, "job_assign", T) => (&mut n, nid.clone()),
    };
    let a = next_of(second, "job_assign", T)
        .await
        .expect("second attempt");
    let mut r = result_for(&a, "hello");
    r["node_id"] = json!(second_id);
    second.send(&r).await;
    terminals(&mut s, 1, T).await;
    let jid = a["job_id"].as_str().expect("job id").to_string();
    wait_text(
        &c,
        "#thr-now",
        "the throughput sparkline to count it",
        |t| t != "0" && t != "–",
    )
    .await;

    // The page's drain button drains it (POST with the admin token).
    let button = format!("tr[data-node=\"{nid}\"] button.act");
    c.find(Locator::Css(&button))
        .await
        .expect("drain button")
        .click()
        .await
        .expect("click");
    wait_text(&c, &row, "the node to turn draining", |t| t == "draining").await;
    shot(&c, "dashboard").await;

    // The search box opens the job's explanation.
    c.find(Locator::Id("q"))
        .await
        .expect("search")
        .send_keys(&jid)
        .await
        .expect("type");
    click(&c, "go").await;
    wait_text(&c, "#detail td.verdict", "the explanation's route", |t| {
        t == "chosen"
    })
    .await;
    let detail = c
        .find(Locator::Id("detail"))
        .await
        .expect("detail")
        .text()
        .await
        .expect("text");
    assert!(
        detail.contains(&jid) && detail.contains("JOB_TIMEOUT") && detail.contains("tried"),
        "{detail}"
    );
    c.find(Locator::Id("detail-box"))
        .await
        .expect("box")
        .click()
        .await
        .ok();
    c.execute(
        "document.getElementById('detail-box').scrollIntoView()",
        vec![],
    )
    .await
    .expect("scroll");
    shot(&c, "dashboard-explain").await;

    // The search box opens the session: its state, languages, results and jobs (the
    // languages read fields the record does not have before the console audit: "–→–").
    let q = c.find(Locator::Id("q")).await.expect("search");
    q.clear().await.expect("clear");
    q.send_keys(&sid).await.expect("type");
    click(&c, "go").await;
    let head = wait_text(&c, "#detail p", "the session's header", |t| {
        t.contains(&sid)
    })
    .await;
    assert!(head.contains("open") && head.contains("zh→en"), "{head}");
    c.close().await.expect("close browser");
    let mut conn = redis.client().await;
    common::invariants::check(&mut conn).await;
}

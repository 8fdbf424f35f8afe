//! Test harness: a real `redis-server` per test on a free loopback port in a temp dir,
//! in-process Switchyard instances, real WebSocket clients speaking PROTOCOL.md JSON, and
//! the invariant checker that every scenario ends with.

#![allow(dead_code)]

pub mod actors;
pub mod cell;
pub mod children;
pub mod invariants;
pub mod jobs;
pub mod kustomize;
pub mod load;
pub mod model;
pub mod redis_server;
pub mod roaming;
pub mod topology;
pub mod ws;

use std::time::Duration;

use serde_json::Value;
pub use switchyard::auth::Scope;
use switchyard::config::Config;
use switchyard::server::{self, Running};

#[allow(unused_imports)] // not every test binary starts child processes
pub use redis_server::{RedisServer, free_port, single_only, unique_port};
pub use ws::WsClient;

/// The HS256 secret every test instance verifies with (auth is on in every test, as in
/// production).
pub const TEST_SECRET: &str = "switchyard-test-secret-0123456789abcdef";

/// `SWITCHYARD_AUTH__HS256_SECRETS` for child-process instances.
pub fn secret_env() -> (&'static str, String) {
    (
        "SWITCHYARD_AUTH__HS256_SECRETS",
        format!("[\"{TEST_SECRET}\"]"),
    )
}

/// A token signed with [`TEST_SECRET`], valid for an hour.
pub fn token(scopes: &[Scope], sub: Option<&str>, tenant: Option<&str>) -> String {
    mint(scopes, sub, tenant, None)
}

/// A token with a `cell` claim (places a peer without tenant in that cell).
pub fn cell_token(scopes: &[Scope], tenant: Option<&str>, cell: &str) -> String {
    mint(scopes, None, tenant, Some(cell))
}

/// A token that expires `ttl_s` seconds from now (`exp` is whole seconds).
pub fn short_token(scopes: &[Scope], ttl_s: u64) -> String {
    mint_ttl(scopes, None, None, None, ttl_s)
}

/// [`short_token`] of the credential holder `sub`.
pub fn short_token_of(scopes: &[Scope], sub: &str, ttl_s: u64) -> String {
    mint_ttl(scopes, Some(sub), None, None, ttl_s)
}

fn mint(scopes: &[Scope], sub: Option<&str>, tenant: Option<&str>, cell: Option<&str>) -> String {
    mint_ttl(scopes, sub, tenant, cell, 3600)
}

fn mint_ttl(
    scopes: &[Scope],
    sub: Option<&str>,
    tenant: Option<&str>,
    cell: Option<&str>,
    ttl_s: u64,
) -> String {
    switchyard::auth::mint::hs256(
        TEST_SECRET,
        &switchyard::auth::mint::TokenSpec {
            scopes: scopes.to_vec(),
            sub: sub.map(str::to_string),
            tenant: tenant.map(str::to_string),
            cell: cell.map(str::to_string),
            ttl_s,
        },
    )
    .expect("mint test token")
}

/// A token with both admin scopes.
pub fn admin_token() -> String {
    token(&[Scope::AdminRead, Scope::AdminWrite], None, None)
}

/// `url` (`ws://host:port/ws/node` or `/ws/session`) with a fleet / session credential
/// for its endpoint in `?access_token=`, as a lingua client configures it.
pub fn with_token(url: &str) -> String {
    let scope = if url.contains("/ws/node") {
        Scope::Node
    } else {
        Scope::Session
    };
    with_given_token(url, &token(&[scope], None, None))
}

/// `url` with `token` in `?access_token=`.
pub fn with_given_token(url: &str, token: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}access_token={token}")
}

/// Fast timings so liveness and sweeps happen within a test: heartbeat 300 ms, liveness
/// 8 s (the liveness scenarios shorten it), sweep every 50 ms, disconnect grace 400 ms.
pub fn test_config(redis_url: &str) -> Config {
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.redis.url = redis_url.into();
    if let Some((redis, cells)) = redis_server::redis_config_for(redis_url) {
        cfg.redis = redis;
        cfg.cells = cells;
    }
    cfg.redis.timeout_ms = 500;
    cfg.auth.hs256_secrets = vec![TEST_SECRET.into()];
    cfg.node.heartbeat_interval_ms = 300;
    // Scenario nodes rarely heartbeat: a liveness long enough not to race them on a loaded
    // machine (at 3 s, a node of a test stalled past it was once taken offline mid-test);
    // the liveness scenarios shorten it.
    cfg.node.liveness_ms = Some(8_000);
    cfg.node.disconnect_grace_ms = 400;
    cfg.node.offline_retention_ms = 5_000;
    // Scenarios change a node's capabilities by heartbeat several times a second; the pacing
    // has its own scenario (tests/nodes/capabilities.rs).
    cfg.node.capability_change_interval_ms = 0;
    cfg.sweep.interval_ms = 50;
    cfg.ws.max_frame_bytes = 64 * 1024;
    cfg.session.pause_ms = 300;
    cfg.session.reorder_window_ms = 400;
    cfg.session.max_duration_ms = 10_000;
    cfg.jobs.run_timeout_ms = 3_000;
    cfg.jobs.ack_timeout_ms = 1_000;
    cfg.jobs.queue_wait_ms = 1_500;
    cfg.jobs.record_ttl_ms = 60_000;
    cfg.instance.presence_ttl_ms = 600;
    cfg.instance.beat_interval_ms = 150;
    cfg.instance.drain_delay_ms = 300;
    cfg.instance.drain_grace_ms = 500;
    cfg.inbox.block_ms = 500;
    cfg.inbox.claim_idle_ms = 1_000;
    cfg
}

/// Start an instance with `tweak` applied to the test configuration.
pub async fn start_tweaked(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut cfg = test_config(&redis.url());
    tweak(&mut cfg);
    start_with(cfg).await
}

/// Start an instance in-process against `redis`.
pub async fn start_instance(redis: &RedisServer) -> Running {
    start_with(test_config(&redis.url())).await
}

pub async fn start_with(cfg: Config) -> Running {
    server::start(cfg).await.expect("instance starts")
}

/// The WebSocket URL of `path` on `r`, carrying a fleet (`/ws/node`) or session token.
pub fn ws_url(r: &Running, path: &str) -> String {
    with_token(&bare_ws_url(r, path))
}

/// `/ws/node` on `r` with a token bound to `node_id` (`sub`): the credential that may take
/// that node over from a live connection.
pub fn node_url_as(r: &Running, node_id: &str) -> String {
    with_given_token(
        &bare_ws_url(r, "/ws/node"),
        &token(&[Scope::Node], Some(node_id), None),
    )
}

/// The WebSocket URL of `path` on `r` without any credential.
/// `path` (`/ws/node` or `/ws/session`) on `r` with a credential of `tenant`: the only
/// credential whose frames may name that tenant (`tenant_id`).
pub fn tenant_ws_url(r: &Running, path: &str, tenant: &str) -> String {
    let scope = if path.contains("/ws/node") {
        Scope::Node
    } else {
        Scope::Session
    };
    with_given_token(&bare_ws_url(r, path), &token(&[scope], None, Some(tenant)))
}

pub fn bare_ws_url(r: &Running, path: &str) -> String {
    format!("ws://{}{}", r.addr, path)
}

pub fn http_url(r: &Running, path: &str) -> String {
    format!("http://{}{}", r.addr, path)
}

/// A lingua frame from tests/fixtures/lingua/NAME.json.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/lingua/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of the sample `name{labels}` (exactly that series) in an exposition, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The instance's `/metrics` text.
pub async fn metrics_text(r: &Running) -> String {
    let resp = reqwest::get(http_url(r, "/metrics"))
        .await
        .expect("GET /metrics");
    resp.text().await.expect("metrics body")
}

/// The settings of the tests' own Redis connections (assertions, the invariant checker):
/// redis-rs gives up on a reply after 500 ms by default, and the invariant checker's one
/// read of a whole cell (9,312 pools in one scenario) can take longer on a loaded machine.
pub fn assertion_connection() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)))
}

/// GET `url` with an admin token.
pub async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("http get");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// `/readyz` of `inst` once it answers 200 (an instance is ready once its inbox consumer
/// has started, a moment after `server::start` returns), within 5 s.
pub async fn ready(inst: &switchyard::server::Running) -> Value {
    let url = http_url(inst, "/readyz");
    eventually(Duration::from_secs(5), "/readyz 200", || async {
        let (status, body) = get_json(&url).await;
        (status == 200).then_some(body)
    })
    .await
}

/// The record of node `id` (empty when there is none).
pub async fn node_hash(
    c: &mut redis::aio::MultiplexedConnection,
    id: &str,
) -> std::collections::HashMap<String, String> {
    redis::AsyncCommands::hgetall(c, format!("{}node:{id}", invariants::PREFIX))
        .await
        .expect("hgetall")
}

/// An inbox entry's `env` field as deliver.lua packs it (MessagePack): `msg` for session
/// `sid` on connection `conn`, numbered `seq` among its terminal messages (0: none).
pub fn session_envelope(sid: &str, conn: &str, msg: &str, seq: u64) -> Vec<u8> {
    let env = serde_json::json!({"k": "session", "id": sid, "conn": conn, "msg": msg, "seq": seq});
    rmp_serde::to_vec_named(&env).expect("envelope")
}

/// Redis' clock, in ms (the clock the scripts' deadlines are on).
pub async fn redis_now(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// `cmdstat_<cmd>` calls from `INFO commandstats` (a subcommand as `function|load`): those
/// that ran.
pub async fn command_calls(c: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    command_stats(c, cmd, &["calls"]).await
}

/// Calls of `cmd` that reached this server at all: run (`calls`), refused before running
/// (`rejected_calls`: a redirect, TRYAGAIN, a bad argument count) or failed while running
/// (`failed_calls`).
pub async fn command_arrivals(c: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    command_stats(c, cmd, &["calls", "rejected_calls", "failed_calls"]).await
}

/// The sum of `fields` of `cmdstat_<cmd>` in `INFO commandstats` (0 when it has none).
async fn command_stats(
    c: &mut redis::aio::MultiplexedConnection,
    cmd: &str,
    fields: &[&str],
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .expect("info");
    let Some(line) = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
    else {
        return 0;
    };
    line.split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| fields.contains(k))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Every key of a node record in the cell.
pub async fn node_keys(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::AsyncCommands::keys(c, format!("{}node:*", invariants::PREFIX))
        .await
        .expect("keys")
}

/// One field of session `sid`'s record (`""` when absent).
pub async fn session_field(
    c: &mut redis::aio::MultiplexedConnection,
    sid: &str,
    f: &str,
) -> String {
    let v: Option<String> =
        redis::AsyncCommands::hget(c, format!("{}session:{sid}", invariants::PREFIX), f)
            .await
            .expect("hget");
    v.unwrap_or_default()
}

/// The Redis behind `c` busy for `ms` (a script that spins, sent on `c`): calls sent
/// meanwhile wait. Returns once the spin runs, with when Redis is free again.
pub async fn spin(mut c: redis::aio::MultiplexedConnection, ms: u64) -> tokio::time::Instant {
    let free = tokio::time::Instant::now() + Duration::from_millis(ms + 100);
    tokio::spawn(async move {
        // Its reply comes after this client's own timeout: only the spinning matters.
        let _: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
            .arg(
                "local function now() local t = redis.call('TIME') \
                 return t[1] * 1000 + t[2] / 1000 end \
                 local stop = now() + tonumber(ARGV[1]) \
                 while now() < stop do end",
            )
            .arg(0)
            .arg(ms)
            .query_async(&mut c)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // it runs
    free
}

/// User `switchyard` (password `acl-test-password`) with the ACL `rules` on the Redis behind
/// `c`, as docs/operations.md has an operator create it.
pub async fn acl_user(c: &mut redis::aio::MultiplexedConnection, rules: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("switchyard")
        .arg("on")
        .arg(">acl-test-password")
        .arg(rules.split_whitespace().collect::<Vec<_>>())
        .query_async(c)
        .await
        .expect("acl setuser");
}

/// Each of `paths` answers 200 to an admin token on `inst`.
pub async fn admin_reads_ok(inst: &Running, paths: &[&str]) {
    let http = reqwest::Client::new();
    for path in paths {
        let r = http
            .get(http_url(inst, path))
            .bearer_auth(admin_token())
            .send()
            .await
            .expect(path);
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}

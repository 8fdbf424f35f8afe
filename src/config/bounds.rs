//! Bounds every value keeps, whatever its section, and the checks of what `serve` would
//! otherwise find only when it starts.
//!
//! - A duration (`*_ms`, `*_s`) is at most a year and any whole number at most 2^53: the
//!   scripts read the configuration as Lua numbers (doubles), `PEXPIRE` takes an integer,
//!   and the instance adds and multiplies durations (a `u64::MAX` meant as "never" made
//!   every `session_init` fail and wrapped the staged body's TTL).
//! - `log.level` is a filter that names levels: a bare word that is no level is a target
//!   to `tracing`, and `"warning"` silenced every line, the configuration advice among them.
//! - The two listen addresses do not share a port.

use std::net::SocketAddr;

use serde_json::Value;

/// A year, in ms and in s.
const YEAR_MS: u64 = 365 * 24 * 3_600 * 1_000;
const YEAR_S: u64 = YEAR_MS / 1_000;
/// The largest whole number a double (a Lua number) holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// The first value out of bounds: (field, reason).
pub(super) fn check(cfg: &super::Config) -> Result<(), (String, String)> {
    let v = serde_json::to_value(cfg).map_err(|e| ("(configuration)".into(), e.to_string()))?;
    walk(&v, "")?;
    log_filter(&cfg.log.level).map_err(|r| ("log.level".into(), r))?;
    listen_ports(&cfg.listen, cfg.admin_listen.as_deref()).map_err(|r| ("admin_listen".into(), r))
}

/// Every number under `v` (named `path`) within its bound.
fn walk(v: &Value, path: &str) -> Result<(), (String, String)> {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p)?;
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"))?;
            }
        }
        Value::Number(n) => {
            let Some(n) = n.as_u64() else { return Ok(()) };
            let (limit, what) = if path.ends_with("_ms") {
                (YEAR_MS, "a year (31536000000 ms)")
            } else if path.ends_with("_s") {
                (YEAR_S, "a year (31536000 s)")
            } else {
                (MAX_EXACT, "2^53")
            };
            if n > limit {
                return Err((path.to_string(), format!("{n} is more than {what}")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// `level`: comma-separated directives, each a level or `target=level` (or a span filter).
fn log_filter(level: &str) -> Result<(), String> {
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains(['=', '[']) && d.parse::<tracing::level_filters::LevelFilter>().is_err() {
            return Err(format!(
                "{d:?} is no level (off, error, warn, info, debug, trace) and no target=level"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?}: {e}"))
}

/// `listen` and `admin_listen` (both parsed already) on different ports, unless either
/// lets the system pick one (port 0) or they are on different addresses.
fn listen_ports(listen: &str, admin: Option<&str>) -> Result<(), String> {
    let (Ok(a), Some(Ok(b))) = (
        listen.parse::<SocketAddr>(),
        admin.map(str::parse::<SocketAddr>),
    ) else {
        return Ok(());
    };
    let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
    if a.port() != 0 && a.port() == b.port() && overlap {
        return Err(format!("{b} takes the port of listen ({a})"));
    }
    Ok(())
}

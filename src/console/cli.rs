//! `switchyard inspect job ID` / `switchyard inspect session ID`: the job's attempts and
//! routing explanation, or the session's state, pending indices, results and jobs, as
//! readable tables (or the API's JSON with `--json`).
//!
//! It reads Redis directly with the configured `redis.url` (the same reads and the same
//! views as `GET /api/v1/jobs/{id}`), so it works at 3 a.m. when no instance answers, the
//! admin listener is firewalled, or no admin token is at hand: whoever holds the Redis URL
//! can read this state anyway.

use std::sync::Arc;

use serde_json::Value;

use crate::cells::Cells;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;

/// What to inspect.
pub enum Target {
    Job(String),
    Session(String),
}

/// Run the command (searching every configured cell); the text to print, or an error.
pub async fn run(cfg: &Config, target: Target, as_json: bool) -> Result<String, String> {
    let cells = Cells::new(cfg, "inspect", Arc::new(Metrics::new())).map_err(|e| e.to_string())?;
    let mut found = None;
    for cell in cells.iter() {
        if let Some(mut v) = view(&cell.store, &target).await? {
            v["cell"] = Value::from(cell.name());
            found = Some(v);
            break;
        }
    }
    let view = found.ok_or_else(|| match &target {
        Target::Job(id) => format!("no job {id} (or its record expired)"),
        Target::Session(id) => format!("no session {id} (or it expired)"),
    })?;
    if as_json {
        return serde_json::to_string_pretty(&view).map_err(|e| e.to_string());
    }
    Ok(match target {
        Target::Job(_) => job_text(&view),
        Target::Session(_) => session_text(&view),
    })
}

/// The view of `target` in one cell's store, if it is there.
async fn view(store: &crate::store::Store, target: &Target) -> Result<Option<Value>, String> {
    Ok(match target {
        Target::Job(id) => {
            let h = store.job_record(id).await.map_err(|e| e.to_string())?;
            (!h.is_empty()).then(|| super::explain::job_view(h))
        }
        Target::Session(id) => {
            let (h, pending, results) =
                store.session_record(id).await.map_err(|e| e.to_string())?;
            if h.is_empty() {
                return Ok(None);
            }
            let jobs = store.session_jobs(id).await.map_err(|e| e.to_string())?;
            let mut v = super::explain::session_view(h, pending, results);
            v["jobs"] = serde_json::to_value(jobs).unwrap_or(Value::Null);
            Some(v)
        }
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        // a node's text (an error message, a transcript) must not drive the terminal
        Value::String(s) => s
            .chars()
            .flat_map(|c| {
                let esc: Vec<char> = if c.is_control() {
                    c.escape_debug().collect()
                } else {
                    vec![c]
                };
                esc
            })
            .collect(),
        other => other.to_string(),
    }
}

/// Rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{c:<pad$}  "));
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn job_text(v: &Value) -> String {
    let j = &v["job"];
    let mut out = String::new();
    for k in [
        "id",
        "session",
        "idx",
        "state",
        "pair",
        "pools",
        "needs",
        "attempt",
        "tried",
        "failure",
        "failure_message",
        "trace_id",
        "created_at",
        "finished_at",
    ] {
        out.push_str(&format!("{k:<16} {}\n", s(&j[k])));
    }
    out.push_str("\nattempts\n");
    let empty = Vec::new();
    let attempts = v["attempts"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            [
                "attempt",
                "node",
                "dispatched_at_ms",
                "finished_at_ms",
                "outcome",
                "reason",
            ]
            .iter()
            .map(|k| s(&a[*k]))
            .collect()
        })
        .collect();
    out.push_str(&table(
        &["#", "node", "dispatched", "finished", "outcome", "reason"],
        &rows,
    ));
    for a in attempts {
        out.push_str(&format!("\nroute of attempt {}\n", s(&a["attempt"])));
        let mut rows = Vec::new();
        for step in a["route"].as_array().unwrap_or(&empty) {
            let pool = s(&step["pool"]);
            let queue_verdict = if pool == "queue_full" {
                "queue full"
            } else {
                "waited in queue"
            };
            for q in step["queues"].as_array().unwrap_or(&empty) {
                rows.push(vec![pool.clone(), s(q), queue_verdict.into(), "-".into()]);
            }
            if let Some(job) = step["after"].as_str() {
                rows.push(vec![
                    pool.clone(),
                    job.into(),
                    "waited behind the turn's earlier part".into(),
                    "-".into(),
                ]);
            }
            for n in step["nodes"].as_array().unwrap_or(&empty) {
                let load = match (n["reserved"].as_u64(), n["capacity"].as_u64()) {
                    (Some(r), Some(c)) => format!("{r}/{c}"),
                    _ => "-".into(),
                };
                rows.push(vec![pool.clone(), s(&n["node"]), s(&n["verdict"]), load]);
            }
            if let Some(m) = step["more"].as_u64().filter(|m| *m > 0) {
                rows.push(vec![
                    pool.clone(),
                    format!("(+{m} more)"),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
        if rows.is_empty() {
            out.push_str("(not recorded)\n");
        } else {
            out.push_str(&table(&["pool", "node", "verdict", "reserved/cap"], &rows));
        }
    }
    out
}

fn session_text(v: &Value) -> String {
    let h = &v["session"];
    let mut out = String::new();
    for k in [
        "id",
        "state",
        "tenant",
        "owner",
        "src",
        "tgt",
        "mode",
        "next_index",
        "next_deliver",
        "out_seq",
        "last_node",
        "last_active",
    ] {
        out.push_str(&format!("{k:<14} {}\n", s(&h[k])));
    }
    let empty = Vec::new();
    let pending: Vec<String> = v["pending"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(s)
        .collect();
    out.push_str(&format!("{:<14} {}\n", "pending", pending.join(",")));
    out.push_str("\nlast results\n");
    let rows: Vec<Vec<String>> = v["results"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            [
                "index",
                "type",
                "job_id",
                "text_asr",
                "text_translated",
                "code",
            ]
            .iter()
            .map(|k| s(&r[*k]))
            .collect()
        })
        .collect();
    out.push_str(&table(
        &["index", "type", "job", "asr", "translated", "code"],
        &rows,
    ));
    out.push_str("\njobs\n");
    let rows: Vec<Vec<String>> = v["jobs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            ["index", "job_id", "state", "node", "attempt", "failure"]
                .iter()
                .map(|k| s(&r[*k]))
                .collect()
        })
        .collect();
    out.push_str(&table(
        &["index", "job", "state", "node", "attempt", "failure"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    /// A node's text reaches the operator's terminal escaped: no OSC 52 clipboard write, no
    /// ANSI colours, no line breaks in a table (console audit).
    #[test]
    fn stored_text_is_printed_with_control_characters_escaped() {
        let v = serde_json::json!("boom\u{1b}]52;c;aGk=\u{7}\n\u{1b}[31mred");
        assert_eq!(super::s(&v), "boom\\u{1b}]52;c;aGk=\\u{7}\\n\\u{1b}[31mred");
        assert_eq!(
            super::s(&serde_json::json!("übersetzt 翻译")),
            "übersetzt 翻译"
        );
    }
}

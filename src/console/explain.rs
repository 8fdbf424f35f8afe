//! The routing explanation and attempt history of a job, decoded from the compact fields
//! the dispatch scripts write (`route:<attempt>`, `end:<attempt>`; docs/redis-keys.md), and
//! the JSON views of a job and a session that the admin API and `switchyard inspect` share.
//! Pure functions: tested without Redis.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

/// One node the scheduler looked at for a dispatch, and what it thought of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Look {
    pub node: String,
    /// chosen, ok (eligible, not the least loaded), full, draining, offline, stale,
    /// tried, notrev, notpool, nocap, `nosvc-<type>`, `down-<type>`, gone.
    pub verdict: String,
    pub reserved: Option<u64>,
    pub capacity: Option<u64>,
}

/// One step of the choice: a candidate pool (or `turn`, `turn_wait`, `affinity`, `offer`,
/// `queued@<ms>`, `none`, `queue_full`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub pool: String,
    pub nodes: Vec<Look>,
    /// Queues the job waited in (for a `queued@<ms>` step), or the full queue that failed it
    /// (for a `queue_full` step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// The earlier part of the same turn this job waited behind (a `turn_wait` step: that
    /// part's job id; it had no node yet, and the turn's parts go to one node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Nodes looked at beyond the recorded ones (the record keeps 32 per attempt).
    #[serde(skip_serializing_if = "is_zero")]
    pub more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `route:<n>` = `"<ms or -> <node or -> <step>|<step>..."`, step = `label>entry,entry`,
/// entry = `node=verdict[:reserved/capacity]` or `+N`. Returns (time, node, steps), the
/// chosen node's entry marked `chosen`. A job that finished on its first attempt keeps
/// `"- - <label>><node>=ok:r/c,+N"`: time and node are the record's (`route_of`).
pub fn parse_route(raw: &str) -> (Option<u64>, Option<String>, Vec<Step>) {
    let (at, node, mut steps) = parse_route_raw(raw);
    if let Some(n) = &node {
        mark_chosen(&mut steps, n);
    }
    (at, node, steps)
}

fn parse_route_raw(raw: &str) -> (Option<u64>, Option<String>, Vec<Step>) {
    let mut it = raw.splitn(3, ' ');
    let at = it.next().and_then(|t| t.parse().ok());
    let node = it.next().filter(|n| *n != "-").map(str::to_string);
    let steps = it
        .next()
        .unwrap_or_default()
        .split('|')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let (label, entries) = seg.split_once('>').unwrap_or((seg, ""));
            let mut step = Step {
                pool: label.to_string(),
                nodes: Vec::new(),
                queues: Vec::new(),
                after: None,
                more: 0,
            };
            for e in entries.split(',').filter(|e| !e.is_empty()) {
                if let Some(n) = e.strip_prefix('+') {
                    step.more = n.parse().unwrap_or(0);
                } else if let Some((node, rest)) = e.split_once('=') {
                    let (verdict, load) = rest.split_once(':').unwrap_or((rest, ""));
                    let (r, c) = load.split_once('/').unwrap_or(("", ""));
                    step.nodes.push(Look {
                        node: node.to_string(),
                        verdict: verdict.to_string(),
                        reserved: r.parse().ok(),
                        capacity: c.parse().ok(),
                    });
                } else if label == "turn_wait" {
                    step.after = Some(e.to_string());
                } else {
                    step.queues.push(e.to_string());
                }
            }
            step
        })
        .collect::<Vec<_>>();
    (at, node, steps)
}

/// The script names the chosen node in front and leaves its entry `ok` (no rewrite in
/// Lua): the last `ok` entry of that node is the one that took the job.
fn mark_chosen(steps: &mut [Step], node: &str) {
    if let Some(look) = steps
        .iter_mut()
        .rev()
        .flat_map(|s| s.nodes.iter_mut().rev())
        .find(|l| l.node == node && l.verdict == "ok")
    {
        look.verdict = "chosen".into();
    }
}

/// Attempt `n`'s (time, node, steps): its `route:<n>`, with a time or node it leaves out
/// (`-`) taken from the record when `n` is the record's current attempt.
fn route_of(raw: Option<&String>, n: u32, h: &HashMap<String, String>) -> RouteParts {
    let (mut at, mut node, mut steps) = raw.map(|r| parse_route_raw(r)).unwrap_or_default();
    let current = h.get("attempt").and_then(|a| a.parse::<u32>().ok()) == Some(n);
    if current {
        if node.is_none() && raw.is_none_or(|r| r.starts_with("- - ")) {
            node = h.get("node").cloned().filter(|n| !n.is_empty());
        }
        if at.is_none() && raw.is_some_and(|r| r.starts_with("- ")) {
            at = h.get("dispatched_at").and_then(|t| t.parse().ok());
        }
    }
    if let Some(n) = &node {
        mark_chosen(&mut steps, n);
    }
    (at, node, steps)
}

type RouteParts = (Option<u64>, Option<String>, Vec<Step>);

/// Most attempts the job view lists (`jobs.max_attempts` is 3 by default; a record never
/// holds more attempts than that setting allowed when it was written).
const MAX_ATTEMPTS_SHOWN: u32 = 1_000;

/// `end:<n>` = `"<ms> <ok|failover|failed> [CODE]"`.
pub fn parse_end(raw: &str) -> (Option<u64>, String, Option<String>) {
    let mut it = raw.splitn(3, ' ');
    let at = it.next().and_then(|t| t.parse().ok());
    let outcome = it.next().unwrap_or("unknown").to_string();
    (at, outcome, it.next().map(str::to_string))
}

/// The job view: its record (without the routing fields, `spec` decoded) and every
/// attempt with its explanation.
pub fn job_view(mut h: HashMap<String, String>) -> Value {
    let mut routes = HashMap::new();
    let mut ends = HashMap::new();
    h.retain(|k, v| {
        if let Some(n) = k.strip_prefix("route:").and_then(|n| n.parse::<u32>().ok()) {
            routes.insert(n, std::mem::take(v));
            false
        } else if let Some(n) = k.strip_prefix("end:").and_then(|n| n.parse::<u32>().ok()) {
            ends.insert(n, std::mem::take(v));
            false
        } else {
            true
        }
    });
    let attempt: u32 = h.get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
    // (bounded: the numbers come from Redis, and a damaged `attempt` of 4,000,000,000 must
    // not make this view allocate that many attempts)
    let last = routes
        .keys()
        .copied()
        .max()
        .unwrap_or(0)
        .max(attempt)
        .min(MAX_ATTEMPTS_SHOWN);
    let state = h.get("state").cloned().unwrap_or_default();
    let mut attempts = Vec::new();
    for n in 1..=last {
        let (at, node, steps) = route_of(routes.get(&n), n, &h);
        let (finished, mut outcome, mut reason) = match ends.get(&n) {
            Some(e) => parse_end(e),
            None if n == last && node.is_none() && state == "QUEUED" => {
                (None, "queued".into(), None)
            }
            None if n == last && state == "FINISHED" => (
                h.get("finished_at").and_then(|t| t.parse().ok()),
                "ok".into(),
                None,
            ),
            None if n == last && state == "FAILED" => (
                h.get("finished_at").and_then(|t| t.parse().ok()),
                "failed".into(),
                h.get("failure").cloned(),
            ),
            None if n == last => (None, "in_flight".into(), None),
            None => (None, "unknown".into(), None),
        };
        if outcome == "failed" && n == last {
            reason = h.get("failure").cloned().or(reason);
            if node.is_none() {
                outcome = "not_dispatched".into();
            }
        }
        let message = (n == last && state == "FAILED")
            .then(|| h.get("failure_message").cloned())
            .flatten();
        attempts.push(json!({
            "attempt": n, "node": node, "dispatched_at_ms": at, "finished_at_ms": finished,
            "outcome": outcome, "reason": reason, "message": message, "route": steps,
        }));
    }
    let mut job = serde_json::Map::new();
    for (k, v) in h {
        let val = if k == "spec" {
            serde_json::from_str(&v).unwrap_or(Value::String(v))
        } else {
            Value::String(v)
        };
        job.insert(k, val);
    }
    json!({"job": job, "attempts": attempts})
}

/// Session fields an operator never needs to see (credentials of the client's socket).
const SECRET_FIELDS: [&str; 2] = ["resume_hash", "conn"];

/// The session view: record (secrets left out), pending indices, newest results
/// summarised (texts, codes, job ids; never the audio).
pub fn session_view(
    mut h: HashMap<String, String>,
    pending: Vec<String>,
    results: Vec<(u64, String)>,
) -> Value {
    for k in SECRET_FIELDS {
        h.remove(k);
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, raw)| {
            let v: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
            let pick = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            json!({"index": i, "type": pick("type"), "job_id": pick("job_id"),
                   "text_asr": pick("text_asr"), "text_translated": pick("text_translated"),
                   "code": pick("code"), "reason": pick("reason")})
        })
        .collect();
    json!({"session": h, "pending": pending, "results": results})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_decodes_into_steps_and_verdicts() {
        let (at, node, steps) = parse_route(
            "1700 node-B turn>node-A=full:4/4|pub:zh:en>node-C=tried,node-D=ok:2/4,node-B=ok:1/4,+3",
        );
        assert_eq!(at, Some(1700));
        assert_eq!(node.as_deref(), Some("node-B"));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].pool, "turn");
        assert_eq!(steps[0].nodes[0].verdict, "full");
        assert_eq!(steps[0].nodes[0].reserved, Some(4));
        assert_eq!(steps[1].nodes[0].reserved, None);
        assert_eq!(steps[1].nodes[1].verdict, "ok", "eligible, more loaded");
        assert_eq!(
            steps[1].nodes[2].verdict, "chosen",
            "the node named in front"
        );
        assert_eq!(steps[1].more, 3);
    }

    #[test]
    fn a_queued_then_offered_attempt_keeps_both_steps() {
        let (_, node, steps) = parse_route(
            "9 node-A pub:zh:en>node-A=full:2/2|queued@5>pub:zh:en|offer>node-A=chosen:1/2",
        );
        assert_eq!(node.as_deref(), Some("node-A"));
        assert_eq!(steps[1].queues, vec!["pub:zh:en".to_string()]);
        assert_eq!(steps[2].pool, "offer");
        assert_eq!(steps[2].nodes[0].verdict, "chosen");
        assert_eq!(steps[0].nodes[0].verdict, "full");
    }

    #[test]
    fn a_turn_part_that_waited_names_the_earlier_part() {
        let (_, node, steps) = parse_route("5 - turn_wait>job-a-0|queued@5>pub:zh:en");
        assert_eq!(node, None);
        assert_eq!(steps[0].pool, "turn_wait");
        assert_eq!(steps[0].after.as_deref(), Some("job-a-0"));
        assert!(steps[0].queues.is_empty() && steps[0].nodes.is_empty());
        assert_eq!(steps[1].queues, vec!["pub:zh:en".to_string()]);
    }

    /// Review finding: the attempt count came from Redis unbounded.
    #[test]
    fn a_damaged_attempt_count_does_not_blow_up_the_view() {
        let h: HashMap<String, String> = [("id", "job-1"), ("attempt", "4000000000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let v = job_view(h);
        let n = v["attempts"].as_array().map_or(0, Vec::len);
        assert_eq!(n, MAX_ATTEMPTS_SHOWN as usize);
    }

    #[test]
    fn a_failed_over_job_lists_every_attempt() {
        let h: HashMap<String, String> = [
            ("id", "job-1"),
            ("state", "FINISHED"),
            ("attempt", "2"),
            ("route:1", "10 node-A pub:zh:en>node-A=ok:0/4"),
            ("end:1", "20 failover JOB_TIMEOUT"),
            ("route:2", "21 node-B pub:zh:en>node-A=tried,node-B=ok:0/4"),
            ("end:2", "30 ok"),
            ("spec", "{\"type\":\"job_assign\"}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let v = job_view(h);
        assert_eq!(v["attempts"][0]["outcome"], "failover");
        assert_eq!(v["attempts"][0]["reason"], "JOB_TIMEOUT");
        assert_eq!(v["attempts"][1]["node"], "node-B");
        assert_eq!(v["attempts"][1]["finished_at_ms"], 30);
        assert_eq!(v["job"]["spec"]["type"], "job_assign");
        assert!(v["job"].get("route:1").is_none());
    }
    #[test]
    fn a_compact_route_takes_its_time_and_node_from_the_record() {
        let h: HashMap<String, String> = [
            ("state", "FINISHED"),
            ("attempt", "1"),
            ("node", "node-B"),
            ("dispatched_at", "1700"),
            ("finished_at", "1750"),
            ("route:1", "- - pub:zh:en>node-B=ok:1/4,+2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let v = job_view(h);
        let a = &v["attempts"][0];
        assert_eq!(a["node"], "node-B", "{v}");
        assert_eq!(a["dispatched_at_ms"], 1700, "{v}");
        assert_eq!(a["outcome"], "ok", "{v}");
        assert_eq!(a["route"][0]["pool"], "pub:zh:en", "{v}");
        assert_eq!(a["route"][0]["nodes"][0]["verdict"], "chosen", "{v}");
        assert_eq!(a["route"][0]["more"], 2, "{v}");
    }
}

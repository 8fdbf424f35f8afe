//! The operator's reference pages describe the binary that is built: every setting
//! `switchyard check-config` prints is in docs/configuration.md, in its section's table,
//! with the default the binary has, and its section can be set from the environment; every
//! metric family the instance registers, and each as a running instance names it on
//! `/metrics`, is in docs/observability.md.
//! (A reviewer found four settings rules and two metrics the pages had drifted from; this
//! keeps the next drift from passing unnoticed.)

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::actors::{AutoNode, open_session, terminals, utterance};
use common::invariants;
use common::*;

const CONFIGURATION: &str = include_str!("../docs/configuration.md");
const OBSERVABILITY: &str = include_str!("../docs/observability.md");
/// Where the instance registers its metric families (with the prefix `switchyard_`).
const METRICS_SRC: &str = include_str!("../src/telemetry/metrics.rs");
const POOLS_SRC: &str = include_str!("../src/telemetry/pools.rs");

/// `check-config`'s effective defaults as section → key → value (top-level keys under "").
/// Unset values (`# key: unset`) read as `unset`. Run with `auth.mode = "open"`, the one
/// setting the defaults cannot start without (a key or open mode).
fn effective_defaults() -> BTreeMap<String, BTreeMap<String, String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check-config")
        // the binary's own defaults: no SWITCHYARD_* of the caller's environment
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| !k.starts_with("SWITCHYARD_")))
        .env("SWITCHYARD_AUTH__MODE", "open")
        .output()
        .expect("run switchyard check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            all.entry(section.clone()).or_default();
        } else if let Some(rest) = line.strip_prefix("# ") {
            if let Some((key, how)) = rest.split_once(": ")
                && how.starts_with("unset")
            {
                all.entry(section.clone())
                    .or_default()
                    .insert(key.into(), "unset".into());
            }
        } else if let Some((key, value)) = line.split_once(" = ") {
            all.entry(section.clone())
                .or_default()
                .insert(key.into(), value.into());
        }
    }
    all
}

/// docs/configuration.md shows `check-config`'s whole output with the defaults and one
/// secret: it is what the binary prints, line for line (an operator compares theirs to it).
#[test]
fn the_sample_check_config_output_is_what_the_binary_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check-config")
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| !k.starts_with("SWITCHYARD_")))
        .env(
            "SWITCHYARD_AUTH__HS256_SECRETS",
            r#"["docs-test-secret-0123456789abcdef0123"]"#,
        )
        .output()
        .expect("run switchyard check-config");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let start = CONFIGURATION
        .find("```toml\n# effective configuration")
        .expect("the sample output in docs/configuration.md")
        + "```toml\n".len();
    let len = CONFIGURATION[start..].find("```").expect("its end");
    let sample = &CONFIGURATION[start..start + len];
    let lines = |t: &str| t.trim_end().lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        lines(sample),
        lines(&printed),
        "docs/configuration.md's sample"
    );
}

/// The lines of docs/configuration.md's table for `section` ("" = "Top level"): from its
/// heading to the next heading.
fn doc_section(section: &str) -> Vec<&'static str> {
    let heading = if section.is_empty() {
        "### Top level".to_string()
    } else {
        format!("### `[{section}]`")
    };
    let mut lines = CONFIGURATION.lines().skip_while(|l| *l != heading);
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has no `{heading}`"
    );
    lines.take_while(|l| !l.starts_with('#')).collect()
}

/// Whether the default column `doc` states `value`: `unset` as "unset…", anything else as
/// `` `value` `` (strings with or without their quotes, `1000.0` also as `1000`).
fn states_default(doc: &str, value: &str) -> bool {
    if value == "unset" {
        return doc.starts_with("unset");
    }
    let bare = value.trim_matches('"');
    let whole = value.strip_suffix(".0").unwrap_or(value);
    [value, bare, whole]
        .iter()
        .any(|v| doc.contains(&format!("`{v}`")))
}

#[test]
fn every_setting_is_documented_in_its_section_with_the_binary_default() {
    let mut wrong = Vec::new();
    for (section, keys) in effective_defaults() {
        // [telemetry.otlp_headers] is a map of the operator's own names; [[cells]] entries
        // are none by default (their fields have a table of their own).
        if section.contains('.') {
            continue;
        }
        let rows = doc_section(&section);
        for (key, value) in keys {
            let name = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            // the list of cells has a section of its own
            if name == "cells" {
                assert!(
                    CONFIGURATION.contains("### `[[cells]]`"),
                    "no `[[cells]]` section"
                );
                continue;
            }
            let row = rows.iter().find(|r| r.starts_with(&format!("| `{key}` |")));
            let Some(row) = row else {
                wrong.push(format!("{name}: no row in its section's table"));
                continue;
            };
            let default = row.split('|').nth(2).unwrap_or_default().trim();
            // auth.mode is the one value this run sets
            if name != "auth.mode" && !states_default(default, &value) {
                wrong.push(format!(
                    "{name}: the binary's default is {value}, the page says {default}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md is behind the binary:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_section_is_among_those_the_environment_sets() {
    let para = CONFIGURATION
        .split("**Which variables are read.**")
        .nth(1)
        .and_then(|p| p.split("in any case").next())
        .expect("docs/configuration.md: the paragraph \"Which variables are read.\"");
    for section in effective_defaults().keys() {
        let top = section.split('.').next().unwrap_or_default();
        if !top.is_empty() {
            assert!(
                para.contains(&format!("`{top}`")),
                "docs/configuration.md does not list `{top}` among the sections SWITCHYARD_* variables set"
            );
        }
    }
}

/// Families on `/metrics` as a reader writes them: a counter with `_total`.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The names `src/telemetry/metrics.rs` and `pools.rs` register: every family, also those a
/// running instance shows only from their first sample (a labelled family without children:
/// the scrape leaves it out).
fn registered() -> Vec<String> {
    [METRICS_SRC, POOLS_SRC]
        .iter()
        .flat_map(|src| src.split(".register(").skip(1))
        .filter_map(|call| {
            let name = call.trim_start().strip_prefix('"')?.split('"').next()?;
            Some(format!("switchyard_{name}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_documented() {
    let names = registered();
    assert!(names.len() > 30, "too few registrations found: {names:?}");
    // as registered (a histogram's unit is part of its name), a counter with its `_total`
    let missing: Vec<_> = names
        .iter()
        .filter(|n| {
            !OBSERVABILITY.contains(&format!("`{n}`"))
                && !OBSERVABILITY.contains(&format!("`{n}_total`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/observability.md does not document {missing:?}"
    );

    // What a running instance exposes after a job, exactly as named there.
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let node = AutoNode::start(
        &ws_url(&inst, "/ws/node"),
        fixture("node_register_first"),
        Duration::ZERO,
    )
    .await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let got = terminals(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    let text = metrics_text(&inst).await;
    let exposed = families(&text);
    assert!(
        exposed.len() > 20,
        "too few families on /metrics: {exposed:?}"
    );
    let missing: Vec<_> = exposed
        .iter()
        .filter(|n| !OBSERVABILITY.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/observability.md does not document {missing:?}"
    );
    drop(node);
    invariants::check(&mut redis.client().await).await;
}

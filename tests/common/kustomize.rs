//! The kustomize subset deploy/kubernetes uses, for tests: `resources` (files or
//! directories with a kustomization.yaml) and `patches` with a `path` to a strategic-merge
//! patch (maps merged key by key, lists of named items merged by `name`, other lists
//! replaced). Anything else is refused. deploy/kubernetes/check.py renders the same way and
//! compares itself with `kubectl kustomize` where kubectl is installed.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// deploy/kubernetes/`rel`.
pub fn dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(rel)
}

/// Every document of a YAML file.
pub fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The rendered resources of the kustomization in `directory`.
pub fn render(directory: &Path) -> Vec<Value> {
    let k = load(&directory.join("kustomization.yaml")).remove(0);
    let known = ["apiVersion", "kind", "resources", "patches"];
    for key in k.as_mapping().expect("kustomization is a map").keys() {
        let key = key.as_str().unwrap_or_default();
        assert!(
            known.contains(&key),
            "{directory:?}: `{key}` is not rendered here"
        );
    }
    let mut docs = Vec::new();
    for r in k["resources"].as_sequence().into_iter().flatten() {
        let p = directory.join(r.as_str().expect("resource path"));
        if p.is_dir() {
            docs.extend(render(&p));
        } else {
            docs.extend(load(&p));
        }
    }
    for patch in k["patches"].as_sequence().into_iter().flatten() {
        let path = patch["path"].as_str().expect("only `patches: - path:`");
        for p in load(&directory.join(path)) {
            let hits: Vec<usize> = (0..docs.len())
                .filter(|&i| same_resource(&docs[i], &p))
                .collect();
            assert_eq!(hits.len(), 1, "{path}: patch target matches {hits:?}");
            docs[hits[0]] = merge(&docs[hits[0]], &p);
        }
    }
    docs
}

fn same_resource(a: &Value, b: &Value) -> bool {
    a["kind"] == b["kind"] && a["metadata"]["name"] == b["metadata"]["name"]
}

fn merge(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Mapping(b), Value::Mapping(p)) => {
            let mut out: Mapping = b.clone();
            for (k, v) in p {
                let merged = match b.get(k) {
                    Some(old) => merge(old, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Mapping(out)
        }
        (Value::Sequence(b), Value::Sequence(p)) if named(b) && named(p) && !p.is_empty() => {
            let mut out = b.clone();
            for item in p {
                match out.iter().position(|x| x["name"] == item["name"]) {
                    Some(i) => out[i] = merge(&out[i], item),
                    None => out.push(item.clone()),
                }
            }
            Value::Sequence(out)
        }
        _ => patch.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|x| x.as_mapping().is_some_and(|m| m.contains_key("name")))
}

/// The single resource of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

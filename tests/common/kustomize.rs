//! The kustomize subset deploy/kubernetes uses, for tests: `resources` (files or
//! directories with a kustomization.yaml), `configMapGenerator` with `files` (the name
//! suffixed with kustomize's content hash, the Deployments' volumes renamed to match) and
//! `patches` with a `path` to a strategic-merge
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
    let known = [
        "apiVersion",
        "kind",
        "resources",
        "configMapGenerator",
        "patches",
    ];
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
    let mut renames = Vec::new();
    for g in k["configMapGenerator"].as_sequence().into_iter().flatten() {
        let (doc, rename) = generate(directory, g);
        docs.push(doc);
        renames.push(rename);
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
    for doc in docs.iter_mut().filter(|d| d["kind"] == "Deployment") {
        let volumes = &mut doc["spec"]["template"]["spec"]["volumes"];
        for v in volumes.as_sequence_mut().into_iter().flatten() {
            let name = &mut v["configMap"]["name"];
            if let Some((_, new)) = renames.iter().find(|(old, _)| name == old) {
                *name = Value::String(new.clone());
            }
        }
    }
    // kustomize renames other references too (envFrom, configMapKeyRef, projected volumes,
    // other kinds); this renderer does not, so it refuses them.
    for (old, _) in &renames {
        assert!(
            !docs.iter().any(|d| mentions(d, old)),
            "{old}: referenced where this renderer does not rename (only Deployment volumes)"
        );
    }
    docs
}

/// A string value anywhere in `v` equal to `s`.
fn mentions(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Sequence(items) => items.iter().any(|i| mentions(i, s)),
        Value::Mapping(m) => m.values().any(|i| mentions(i, s)),
        _ => false,
    }
}

/// One `configMapGenerator` item (name, files, options.labels): the ConfigMap, and its
/// (generator name, generated name).
fn generate(directory: &Path, g: &Value) -> (Value, (String, String)) {
    for key in g.as_mapping().expect("generator is a map").keys() {
        let key = key.as_str().unwrap_or_default();
        assert!(
            ["name", "files", "options"].contains(&key),
            "configMapGenerator `{key}` is not rendered here"
        );
    }
    for key in g["options"].as_mapping().into_iter().flat_map(|m| m.keys()) {
        assert_eq!(
            key.as_str(),
            Some("labels"),
            "configMapGenerator options: only `labels` is rendered here"
        );
    }
    let mut data = std::collections::BTreeMap::new();
    for f in g["files"].as_sequence().expect("files").iter() {
        let f = directory.join(f.as_str().expect("file path"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        let key = f
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        data.insert(key, text);
    }
    let base = g["name"].as_str().expect("generator name").to_string();
    let name = format!("{base}-{}", config_map_hash(&data));
    let mut meta = Mapping::new();
    meta.insert("name".into(), Value::String(name.clone()));
    if let Some(labels) = g["options"].get("labels") {
        meta.insert("labels".into(), labels.clone());
    }
    let mut cm = Mapping::new();
    cm.insert("apiVersion".into(), "v1".into());
    cm.insert("kind".into(), "ConfigMap".into());
    cm.insert("metadata".into(), Value::Mapping(meta));
    let data: Mapping = data
        .into_iter()
        .map(|(k, v)| (Value::String(k), Value::String(v)))
        .collect();
    cm.insert("data".into(), Value::Mapping(data));
    (Value::Mapping(cm), (base, name))
}

/// kustomize's name suffix for a generated ConfigMap: the first 10 hex digits of the SHA-256
/// of Go's JSON of `{data, kind, name: ""}` (keys sorted, `<>&` escaped), with 0 1 3 a e
/// spelled g h k m t (deploy/kubernetes/check.py does the same, checked against kubectl).
pub fn config_map_hash(data: &std::collections::BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let json = |s: &str| serde_json::to_string(s).expect("a string");
    let fields: Vec<String> = data
        .iter()
        .map(|(k, v)| format!("{}:{}", json(k), json(v)))
        .collect();
    let text = format!(
        "{{\"data\":{{{}}},\"kind\":\"ConfigMap\",\"name\":\"\"}}",
        fields.join(",")
    )
    .replace('<', "\\u003c")
    .replace('>', "\\u003e")
    .replace('&', "\\u0026")
    .replace('\u{2028}', "\\u2028")
    .replace('\u{2029}', "\\u2029");
    let hex = format!("{:x}", sha2::Sha256::digest(text.as_bytes()));
    hex[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
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

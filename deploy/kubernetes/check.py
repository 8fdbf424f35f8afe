#!/usr/bin/env python3
"""Render every kustomization under deploy/kubernetes and validate what it renders.

- Rendering: a small kustomize subset, exactly what these manifests use: `resources`
  (files, or directories holding a kustomization.yaml), `configMapGenerator` with `files`
  (the name suffixed with kustomize's hash of the content, and the Deployments' volumes
  that name it renamed to match), and `patches` with a `path` to a
  strategic-merge patch (maps merged key by key, lists of named items merged by `name` with
  the patch's items first as kustomize orders them, other lists replaced). Anything else in a kustomization is refused, so the renderer cannot
  silently diverge from kustomize. When `kubectl` is installed, its `kubectl kustomize`
  output must equal ours.
- Built-in kinds: kubernetes-validate (PyPI) against the schemas of Kubernetes K8S_VERSION,
  strict (unknown fields are errors).
- CRDs (ServiceMonitor, PrometheusRule, ScaledObject): their own minimal checks below; a
  PrometheusRule's groups also go through `promtool check rules` when it is installed.

Usage: check.py [--render OVERLAY_DIR]   (make k8s-check runs it in target/k8s-venv)
"""
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys

import yaml
import kubernetes_validate

K8S_VERSION = "1.32.0"
HERE = os.path.dirname(os.path.abspath(__file__))
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch):
    """Strategic merge, limited to what our patches need."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    named = lambda xs: isinstance(xs, list) and all(isinstance(x, dict) and "name" in x for x in xs)
    if named(base) and named(patch) and patch:
        # kustomize's order: the patch's items first, in the patch's order (merged with the
        # base item of the same name, if any), then the base items the patch does not name.
        olds = {b["name"]: b for b in base}
        out = [merge(olds[p["name"]], p) if p["name"] in olds else copy.deepcopy(p) for p in patch]
        named_in_patch = {p["name"] for p in patch}
        return out + [copy.deepcopy(b) for b in base if b["name"] not in named_in_patch]
    return copy.deepcopy(patch)


def config_map_hash(data):
    """kustomize's name suffix for a generated ConfigMap: the first 10 hex digits of the
    SHA-256 of Go's JSON of {data, kind, name: ""} (keys sorted, <>& escaped), with 0 1 3 a e
    spelled g h k m t. `kubectl kustomize` must agree (main() compares)."""
    text = json.dumps({"data": data, "kind": "ConfigMap", "name": ""},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for c, e in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, e)
    return hashlib.sha256(text.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def generate(directory, k, kpath):
    """The ConfigMaps of `configMapGenerator`, and {generator name: generated name}."""
    docs, renames = [], {}
    for g in k.get("configMapGenerator", []):
        opts = g.get("options", {})
        if set(g) - {"name", "files", "options"} or set(opts) - {"labels"}:
            raise SystemExit(f"{kpath}: only configMapGenerator name, files, options.labels are rendered here")
        data = {}
        for f in g["files"]:
            with open(os.path.join(directory, f), encoding="utf-8", newline="") as fh:
                data[os.path.basename(f)] = fh.read()
        name = f"{g['name']}-{config_map_hash(data)}"
        meta = {"name": name}
        if opts.get("labels"):
            meta["labels"] = dict(opts["labels"])
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        renames[g["name"]] = name
    return docs, renames


def rename_references(docs, renames):
    """A Deployment's configMap volumes follow their generated ConfigMap's new name."""
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for v in d["spec"]["template"]["spec"].get("volumes", []):
            cm = v.get("configMap")
            if cm and cm.get("name") in renames:
                cm["name"] = renames[cm["name"]]
    # kustomize renames other references too (envFrom, configMapKeyRef, projected volumes,
    # other kinds); this renderer does not, so it refuses them.
    left = [n for n in renames if f'"{n}"' in json.dumps(docs)]
    if left:
        raise SystemExit(f"{left}: referenced where check.py does not rename (only Deployment volumes)")


def render(directory):
    kpath = os.path.join(directory, "kustomization.yaml")
    (k,) = load_docs(kpath)
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise SystemExit(f"{kpath}: check.py does not render {sorted(unknown)}")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        docs.extend(render(p) if os.path.isdir(p) else load_docs(p))
    generated, renames = generate(directory, k, kpath)
    docs.extend(generated)
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise SystemExit(f"{kpath}: only `patches: - path:` is rendered here")
        for p in load_docs(os.path.join(directory, patch["path"])):
            key = (p["kind"], p["metadata"]["name"])
            hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
            if len(hits) != 1:
                raise SystemExit(f"{kpath}: patch target {key} matches {len(hits)} resources")
            docs[hits[0]] = merge(docs[hits[0]], p)
    rename_references(docs, renames)
    return docs


def by_key(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def promtool_errors(spec):
    """The rule groups as Prometheus parses them (PromQL, durations, templates), when
    `promtool` is installed (Debian's prometheus package has it; `make test` installs it)."""
    promtool = shutil.which("promtool")
    if not promtool:
        return []
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": spec.get("groups") or []}, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        return [f"promtool check rules: {(r.stdout + r.stderr).strip()}"]
    return []


def check_crd(doc):
    """Minimal checks of the custom resources (no schema of theirs is pinned here)."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    errors = []
    if kind == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            errors.append("spec.selector.matchLabels is required")
        for e in spec.get("endpoints") or [None]:
            if not e or not e.get("port") or not e.get("path"):
                errors.append("each endpoint needs port and path")
    elif kind == "PrometheusRule":
        for g in spec.get("groups") or [None]:
            if not g or not g.get("name") or not g.get("rules"):
                errors.append("each group needs name and rules")
                continue
            for r in g["rules"]:
                if not r.get("alert") or not str(r.get("expr", "")).strip():
                    errors.append(f"rule {r}: needs alert and expr")
                extra = set(r) - {"alert", "expr", "for", "labels", "annotations"}
                if extra:
                    errors.append(f"rule {r.get('alert')}: unknown fields {sorted(extra)}")
        errors.extend(promtool_errors(spec))
    elif kind == "ScaledObject":
        if not spec.get("scaleTargetRef", {}).get("name"):
            errors.append("spec.scaleTargetRef.name is required")
        for t in spec.get("triggers") or [None]:
            if not t or t.get("type") != "prometheus":
                errors.append("only prometheus triggers are used here")
                continue
            m = t.get("metadata", {})
            for f in ("serverAddress", "query", "threshold"):
                if not isinstance(m.get(f), str) or not m[f]:
                    errors.append(f"trigger metadata.{f} must be a non-empty string")
            if t.get("metricType", "AverageValue") not in ("AverageValue", "Value", "Utilization"):
                errors.append("metricType must be AverageValue, Value or Utilization")
    else:
        errors.append(f"no check for kind {kind}")
    return errors


CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


def validate(name, docs):
    failures = 0
    for d in docs:
        what = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            errors = check_crd(d) if d.get("kind") in CRDS else []
            if d.get("kind") not in CRDS:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}"]
        except Exception as e:  # schema not found, invalid document
            errors = [str(e)]
        if errors:
            failures += 1
            print(f"FAIL {what}: " + "; ".join(errors))
        else:
            print(f"ok   {what}")
    return len(docs) - failures, failures


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        yaml.safe_dump_all(render(sys.argv[2]), sys.stdout, sort_keys=False)
        return
    kubectl = shutil.which("kubectl")
    passed = failed = 0
    dirs = ["base"] + [os.path.join("overlays", o) for o in sorted(os.listdir(os.path.join(HERE, "overlays")))]
    for rel in dirs:
        docs = render(os.path.join(HERE, rel))
        if kubectl:
            out = subprocess.run([kubectl, "kustomize", os.path.join(HERE, rel)],
                                 capture_output=True, text=True, check=True).stdout
            theirs = by_key([d for d in yaml.safe_load_all(out) if d])
            if theirs != by_key(docs):
                print(f"FAIL {rel}: differs from `kubectl kustomize` (fix check.py's renderer)")
                failed += 1
            else:
                print(f"ok   {rel}: same as `kubectl kustomize`")
                passed += 1
        p, f = validate(rel, docs)
        passed, failed = passed + p, failed + f
    for rel in ["base/secret.example.yaml"] + [
            os.path.join("examples", e) for e in sorted(os.listdir(os.path.join(HERE, "examples")))]:
        p, f = validate(rel, load_docs(os.path.join(HERE, rel)))
        passed, failed = passed + p, failed + f
    print(f"kubernetes {K8S_VERSION} schemas (kubernetes-validate {kubernetes_validate.__version__}"
          f"{', renderer cross-checked with kubectl' if kubectl else ''})")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

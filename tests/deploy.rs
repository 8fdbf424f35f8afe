//! What schemas cannot check in deploy/kubernetes (`make k8s-check` does the schemas): the
//! rendered manifests of every overlay must agree with the binary and its configuration —
//! probe paths answer 200 on a running instance, container and Service ports are the
//! ConfigMap's `listen` / `admin_listen` ports, the grace period covers preStop and the
//! drain, the configuration (the ConfigMap as the file, the Deployment's env over it) passes
//! `check-config` and is the overlay's Redis topology, every env name is one `check-config`
//! reads — and the binary runs exactly as the Deployment runs it: same args and env, the
//! ConfigMap as a read-only file, as `nobody` (when the tests run as root, as `make test`
//! does in CI; another user cannot switch to it), from a directory it cannot write.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kustomize::{self, find};
use common::*;
use figment::providers::Format;
use serde_yaml::Value;
use switchyard::config::cell::spread_names;
use switchyard::config::{Config, RedisMode};

const OVERLAYS: &[&str] = &[
    "base",
    "overlays/development",
    "overlays/sentinel",
    "overlays/cluster",
];

/// The ConfigMap the Deployment mounts: generated from base/switchyard.toml, its name
/// suffixed with the content's hash so that a changed file rolls the pods.
fn config_of(docs: &[Value]) -> (String, Config) {
    let spec = &find(docs, "Deployment", "switchyard")["spec"]["template"]["spec"];
    let mounted = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a ConfigMap volume");
    let suffix = mounted
        .strip_prefix("switchyard-config-")
        .unwrap_or_else(|| panic!("{mounted}: not the generated switchyard-config-<hash>"));
    assert_eq!(suffix.len(), 10, "{mounted}: kustomize's 10-character hash");
    let cm = find(docs, "ConfigMap", mounted);
    let toml = cm["data"]["switchyard.toml"]
        .as_str()
        .expect("switchyard.toml")
        .to_string();
    let cfg: Config = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .unwrap_or_else(|e| panic!("ConfigMap TOML: {e}"));
    (toml, cfg)
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ip:port")
}

fn container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", "switchyard")["spec"]["template"]["spec"]["containers"][0]
}

/// The containerPort of the named port.
fn named_port(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

#[test]
fn manifests_match_the_configuration() {
    for overlay in OVERLAYS {
        let docs = kustomize::render(&kustomize::dir(overlay));
        let (_, cfg) = config_of(&docs);
        let c = container(&docs);
        let ws = named_port(c, "ws");
        assert_eq!(ws, port_of(&cfg.listen), "{overlay}: ws port vs listen");
        let admin = cfg.admin_listen.as_deref().expect("admin_listen set");
        assert_eq!(
            named_port(c, "admin"),
            port_of(admin),
            "{overlay}: admin port"
        );
        for (svc, port) in [("switchyard", "ws"), ("switchyard-admin", "admin")] {
            let s = find(&docs, "Service", svc);
            assert_eq!(
                s["spec"]["ports"][0]["targetPort"], port,
                "{overlay}: {svc}"
            );
        }
        let sm = find(&docs, "ServiceMonitor", "switchyard");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{overlay}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "ws", "{overlay}: {probe}");
        }
        // docs/operations.md: grace >= preStop + drain_delay + drain_grace + 15 s.
        let pod = &find(&docs, "Deployment", "switchyard")["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop");
        let drain_ms = cfg.instance.drain_delay_ms + cfg.instance.drain_grace_ms;
        assert!(
            grace * 1000 >= pre_stop * 1000 + drain_ms + 15_000,
            "{overlay}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + {drain_ms} ms + 15 s"
        );
        // The autoscaler sets the count: `kubectl apply -k` of a Deployment with `replicas`
        // would set it back, deleting the pods the autoscaler added (deploy audit).
        let hpa = find(&docs, "HorizontalPodAutoscaler", "switchyard");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "switchyard");
        let spec = &find(&docs, "Deployment", "switchyard")["spec"];
        assert!(
            spec["replicas"].is_null(),
            "{overlay}: replicas beside an HPA"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    }
}

/// A test value for each key of the operator's Secret the manifests read.
fn secret_value(key: &str) -> String {
    match key {
        "hs256_secrets" => secret_env().1,
        "redis_url" => "redis://deploy-test:6390".into(),
        "redis_password" => "deploy-test-password".into(),
        k => panic!("no test value for the Secret key {k}; add one here"),
    }
}

/// The environment the kubelet gives the container: literal values, Secret keys replaced
/// by test values (optional ones too), and `$(NAME)` references to variables defined
/// earlier in the list expanded (others stay as written, as the kubelet leaves them).
fn container_env(what: &str, c: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().expect("env name").to_string();
        assert!(name.starts_with("SWITCHYARD_"), "{what}: {name}");
        let value = match (e["value"].as_str(), &e["valueFrom"]["secretKeyRef"]) {
            (Some(v), _) => env.iter().fold(v.to_string(), |v, (n, val)| {
                v.replace(&format!("$({n})"), val)
            }),
            (None, r) if r["name"] == "switchyard-auth" => {
                secret_value(r["key"].as_str().expect("secret key"))
            }
            _ => panic!("{what}: {name}: a value or a key of the Secret switchyard-auth"),
        };
        env.push((name, value));
    }
    env
}

/// `switchyard check-config` with `toml` as the configuration file (if any) and exactly
/// `env`: the effective configuration it prints, or its error.
fn check_config(toml: Option<&str>, env: &[(String, String)]) -> Result<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    if let Some(toml) = toml {
        let file = tmp.path().join("switchyard.toml");
        std::fs::write(&file, toml).unwrap();
        cmd.arg("--config").arg(file);
    }
    cmd.arg("check-config")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("check-config");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// What `check-config` printed, read back.
fn effective(printed: &str) -> Config {
    figment::Figment::from(figment::providers::Toml::string(printed))
        .extract()
        .unwrap_or_else(|e| panic!("check-config output: {e}\n{printed}"))
}

/// Every overlay's configuration — the rendered ConfigMap as the file, the Deployment's
/// environment over it — is one `switchyard check-config` accepts without a warning, and it
/// is the topology the overlay is named for.
#[test]
fn every_overlay_configuration_passes_check_config() {
    for overlay in OVERLAYS {
        let docs = kustomize::render(&kustomize::dir(overlay));
        let (toml, _) = config_of(&docs);
        let env = container_env(overlay, container(&docs));
        let printed = check_config(Some(&toml), &env)
            .unwrap_or_else(|e| panic!("{overlay}: check-config refuses it: {e}"));
        assert!(
            !printed.contains("# warning"),
            "{overlay}: settings that work against each other:\n{printed}"
        );
        let cfg = effective(&printed);
        match *overlay {
            "overlays/sentinel" => {
                assert_eq!(cfg.redis.mode, RedisMode::Sentinel, "{overlay}");
                assert!(!cfg.redis.sentinel_master.is_empty(), "{overlay}");
                assert!(cfg.redis.password.is_some(), "{overlay}: password");
                assert!(cfg.redis.urls.len() >= 3, "{overlay}: every sentinel");
                for u in &cfg.redis.urls {
                    assert!(u.ends_with(":26379"), "{overlay}: {u} is not a sentinel");
                    // check-config redacts it: the password must be in what the pod gets.
                    assert!(
                        u.contains(":<redacted>@"),
                        "{overlay}: {u}: the sentinels get a password"
                    );
                }
                let urls = env
                    .iter()
                    .find(|(k, _)| k == "SWITCHYARD_REDIS__URLS")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                assert_eq!(
                    urls.matches(":deploy-test-password@").count(),
                    cfg.redis.urls.len(),
                    "{overlay}: every sentinel URL gets the Secret's password: {urls}"
                );
            }
            "overlays/cluster" => {
                assert_eq!(cfg.redis.mode, RedisMode::Cluster, "{overlay}");
                assert!(cfg.redis.password.is_some(), "{overlay}: password");
                assert!(cfg.redis.urls.len() >= 2, "{overlay}: several seeds");
                // The names are what `cell-names --count 3` prints for three primaries
                // owning the slots as `redis-cli --cluster create` splits them.
                let thirds = vec![vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)]];
                let mut spread = spread_names(&cfg.cell.prefix, "cell", 3, &thirds);
                let mut names: Vec<String> = cfg.cells.iter().map(|c| c.name.clone()).collect();
                spread.sort();
                names.sort();
                assert_eq!(
                    names, spread,
                    "{overlay}: cells not spread over 3 primaries"
                );
                assert_eq!(cfg.cells.iter().filter(|c| c.default).count(), 1);
                assert!(
                    cfg.cells.iter().any(|c| !c.tenants.is_empty()),
                    "{overlay}: a tenant mapping example"
                );
            }
            _ => assert_eq!(cfg.redis.mode, RedisMode::Single, "{overlay}"),
        }
    }
}

/// Every env name of the Deployment is one `check-config` reads: without it, the overlay's
/// configuration prints differently or is refused. A name no section reads (a typo, a wrong
/// separator) would be ignored silently by the binary; a wrong field in a known section is
/// refused by the full environment already (`every_overlay_configuration_passes_check_config`).
#[test]
fn every_env_name_is_one_check_config_reads() {
    for overlay in OVERLAYS {
        let docs = kustomize::render(&kustomize::dir(overlay));
        let (toml, _) = config_of(&docs);
        let env = container_env(overlay, container(&docs));
        let full = check_config(Some(&toml), &env)
            .unwrap_or_else(|e| panic!("{overlay}: check-config refuses it: {e}"));
        for (name, _) in &env {
            let without: Vec<_> = env.iter().filter(|(n, _)| n != name).cloned().collect();
            assert!(
                check_config(Some(&toml), &without).as_ref() != Ok(&full),
                "{overlay}: {name} is not read by check-config"
            );
        }
    }
}

/// examples/cell-names-job.yaml runs `cell-names` on the cluster overlay's Redis: its
/// environment is a configuration `check-config` accepts, with the same seeds and mode.
#[test]
fn the_cell_names_job_asks_the_cluster_overlay_s_redis() {
    let job = kustomize::load(&kustomize::dir("examples/cell-names-job.yaml")).remove(0);
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "cell-names");
    let job_cfg = effective(
        &check_config(None, &container_env("cell-names job", c))
            .unwrap_or_else(|e| panic!("cell-names job: check-config refuses it: {e}")),
    );
    let docs = kustomize::render(&kustomize::dir("overlays/cluster"));
    let (toml, _) = config_of(&docs);
    let cluster =
        effective(&check_config(Some(&toml), &container_env("cluster", container(&docs))).unwrap());
    assert_eq!(job_cfg.redis.mode, RedisMode::Cluster);
    assert_eq!(job_cfg.redis.urls, cluster.redis.urls, "seeds");
    assert!(job_cfg.redis.password.is_some(), "password");
    assert_eq!(job_cfg.cell.prefix, cluster.cell.prefix, "cell.prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_as_the_deployment_runs_it() {
    let redis = RedisServer::start().await;
    let docs = kustomize::render(&kustomize::dir("overlays/development"));
    let (toml, _) = config_of(&docs);
    let c = container(&docs);
    // The ConfigMap volume: a read-only file in a read-only directory.
    let tmp = tempfile::tempdir().unwrap();
    let mount =
        find(&docs, "Deployment", "switchyard")["spec"]["template"]["spec"]["volumes"][0]["name"]
            .as_str()
            .map(|v| {
                c["volumeMounts"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|m| m["name"] == v)
                    .and_then(|m| m["mountPath"].as_str())
                    .expect("config mount")
                    .to_string()
            })
            .expect("config volume");
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("switchyard.toml"), &toml).unwrap();
    std::fs::set_permissions(
        etc.join("switchyard.toml"),
        PermissionsExt::from_mode(0o444),
    )
    .unwrap();
    std::fs::set_permissions(&etc, PermissionsExt::from_mode(0o555)).unwrap();
    // The binary as the image has it, root's and 0755: `nobody` could not reach the build's
    // own when the clone is in a directory only root may enter (/root).
    let bin = tmp.path().join("switchyard");
    std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tmp.path(), PermissionsExt::from_mode(0o555)).unwrap();
    let args: Vec<String> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| {
            let a = a.as_str().expect("arg");
            match a.strip_prefix(&mount) {
                Some(rest) => format!("{}{rest}", etc.display()),
                None => a.to_string(),
            }
        })
        .collect();
    // Ports and Redis differ from the pod's (other tests run beside this one); everything
    // else comes from the manifests.
    let (ws, admin) = (free_port(), free_port());
    // As root, the process drops to nobody before it runs the binary (setgid, setuid, and
    // no supplementary groups: std's `CommandExt::uid` clears them when root drops).
    let as_nobody = is_root();
    let mut cmd = Command::new(&bin);
    if as_nobody {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    cmd.args(&args)
        .current_dir(tmp.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for e in c["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().expect("name");
        if let Some(v) = e["value"].as_str() {
            cmd.env(name, v);
        } else if e["valueFrom"]["secretKeyRef"]["key"] == "hs256_secrets" {
            cmd.env(name, secret_env().1); // the operator's Secret
        } else {
            assert_eq!(
                e["valueFrom"]["secretKeyRef"]["optional"], true,
                "{name}: required secret"
            );
        }
    }
    cmd.env("SWITCHYARD_LISTEN", format!("127.0.0.1:{ws}"))
        .env("SWITCHYARD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("SWITCHYARD_REDIS__URL", redis.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // (ETXTBSY: a process another test thread forked while the copy was open for writing
    // still holds it until that process runs its own program; it does so at once)
    let mut tries = 0;
    let child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.expect("spawn as the Deployment does"),
        }
    };
    let base = format!("http://127.0.0.1:{ws}");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let url = format!(
            "{base}{}",
            c[probe]["httpGet"]["path"].as_str().expect("path")
        );
        eventually(Duration::from_secs(15), probe, || {
            let url = url.clone();
            async move { (reqwest::get(&url).await.ok()?.status().as_u16() == 200).then_some(()) }
        })
        .await;
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    // The WebSocket port does not serve the admin API when admin_listen is set.
    let api = reqwest::get(format!("{base}/api/v1/nodes"))
        .await
        .expect("api");
    assert_eq!(api.status().as_u16(), 404);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().expect("wait");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    })
    .await
    .unwrap();
    std::fs::set_permissions(tmp.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&etc, PermissionsExt::from_mode(0o755)).unwrap();
    assert!(status.0.success(), "exit {:?}: {}", status.0, status.1);
    println!(
        "ran as {} with args {args:?}",
        if as_nobody {
            "nobody"
        } else {
            "the current user (not root: cannot become nobody)"
        }
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The renderer's ConfigMap name suffix is kustomize's: the value `kubectl kustomize`
/// (v5.5.0) gives a generator of one file `f.toml` holding `a = 1`, and one with the
/// characters Go's JSON escapes (`<`, `>`, `&`). `make k8s-check` compares whole renderings
/// with kubectl where it is installed; this holds the hash where it is not.
#[test]
fn the_generated_config_map_name_is_kustomizes() {
    let one = |text: &str| {
        let data = std::collections::BTreeMap::from([("f.toml".to_string(), text.to_string())]);
        kustomize::config_map_hash(&data)
    };
    assert_eq!(one("a = 1\n"), "5bmb99967m");
    assert_eq!(one("a = \"<&>\"\n"), "9mgt8mgm92");
}

//! What schemas cannot check in deploy/kubernetes (`make k8s-check` does the schemas): the
//! rendered manifests of every overlay must agree with the binary and its configuration —
//! probe paths answer 200 on a running instance, container and Service ports are the
//! ConfigMap's `listen` / `admin_listen` ports, the grace period covers preStop and the
//! drain, every env name is one `check-config` reads — and the binary runs exactly as the
//! Deployment runs it: same args and env, the ConfigMap as a read-only file, as `nobody`,
//! from a directory it cannot write.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kustomize::{self, find};
use common::*;
use figment::providers::Format;
use serde_yaml::Value;
use switchyard::config::Config;

const OVERLAYS: &[&str] = &[
    "base",
    "overlays/development",
    "overlays/sentinel",
    "overlays/cluster",
];

fn config_of(docs: &[Value]) -> (String, Config) {
    let cm = find(docs, "ConfigMap", "switchyard-config");
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
            ("startupProbe", "/readyz"),
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
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    }
}

/// Every env name of the Deployment changes what `check-config` prints: a name no section
/// reads (a typo, a wrong separator) would be ignored silently by the binary.
#[test]
fn every_env_name_is_one_check_config_reads() {
    for overlay in OVERLAYS {
        let docs = kustomize::render(&kustomize::dir(overlay));
        let env = container(&docs)["env"].as_sequence().expect("env").clone();
        let run = |extra: Option<(&str, &str)>| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
            cmd.arg("check-config").env_remove("RUST_LOG");
            cmd.env(secret_env().0, secret_env().1);
            if let Some((k, v)) = extra {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("check-config");
            assert!(
                out.status.success(),
                "{overlay}: {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        for e in &env {
            let name = e["name"].as_str().expect("env name");
            assert!(name.starts_with("SWITCHYARD_"), "{overlay}: {name}");
            // A value of the right shape for the key, different from its default.
            let value = match name {
                "SWITCHYARD_AUTH__HS256_SECRETS" => {
                    r#"["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]"#
                }
                n if n.ends_with("_URL") => "redis://deploy-test:6390",
                n => panic!("{overlay}: no test value for {n}; add one here"),
            };
            let without = if name == secret_env().0 {
                run(Some((name, r#"["0123456789abcdef0123456789abcdef"]"#)))
            } else {
                run(None)
            };
            assert_ne!(
                without,
                run(Some((name, value))),
                "{overlay}: {name} is not read by check-config"
            );
        }
    }
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
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let as_nobody = is_root() && which("setpriv");
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
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
    let child = cmd.spawn().expect("spawn as the Deployment does");
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
            "nobody (setpriv)"
        } else {
            "the current user (no setpriv or not root)"
        }
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}

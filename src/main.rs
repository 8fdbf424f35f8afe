//! The `switchyard` binary: `serve` (default) and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::Config;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Scheduler for a real-time speech-translation network"
)]
struct Cli {
    /// TOML configuration file (overridden by SWITCHYARD_* variables).
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one instance (the default).
    Serve,
    /// Print the effective configuration; exit non-zero if it is invalid.
    CheckConfig,
    /// Simulated nodes and sessions against running instances (demo, load, benchmarks).
    Sim(Box<switchyard::sim::SimArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Sim(args) => switchyard::sim::main(*args),
        Command::CheckConfig => match toml_string(&cfg) {
            Ok(s) => {
                println!(
                    "# effective configuration (node liveness = {} ms)\n{s}",
                    cfg.liveness_ms()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchyard: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let telemetry = {
                // The gRPC exporter needs the runtime's handle when it is built.
                let _enter = rt.enter();
                switchyard::telemetry::init(&cfg)
            };
            if telemetry.exporting() {
                tracing::info!("exporting spans with OTLP");
            }
            let result = rt.block_on(switchyard::server::run(cfg));
            let _enter = rt.enter();
            telemetry.shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn toml_string(cfg: &Config) -> Result<String, String> {
    let v = serde_json::to_value(cfg).map_err(|e| e.to_string())?;
    let mut out = String::new();
    write_toml(&mut out, "", &v);
    Ok(out)
}

/// Print a JSON object as TOML sections (flat values first, then nested tables).
fn write_toml(out: &mut String, section: &str, v: &serde_json::Value) {
    let Some(map) = v.as_object() else { return };
    let key = |k: &str| {
        if k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            k.to_string()
        } else {
            serde_json::Value::from(k).to_string()
        }
    };
    for (k, val) in map.iter().filter(|(_, v)| !v.is_object()) {
        match val {
            serde_json::Value::Null if k == "liveness_ms" => out.push_str(&format!(
                "# {k}: unset, derived as 3 x heartbeat_interval_ms\n"
            )),
            serde_json::Value::Null => out.push_str(&format!("# {k}: unset\n")),
            _ => out.push_str(&format!("{} = {val}\n", key(k))),
        }
    }
    for (k, val) in map.iter().filter(|(_, v)| v.is_object()) {
        let name = if section.is_empty() {
            key(k)
        } else {
            format!("{section}.{}", key(k))
        };
        out.push_str(&format!("\n[{name}]\n"));
        write_toml(out, &name, val);
    }
}

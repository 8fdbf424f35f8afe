//! The `switchyard` binary: `serve` (default; `--dev` for the development setup),
//! `check-config`, `token`, `inspect` and `sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::Config;

/// mimalloc instead of glibc's malloc (Cargo.toml says why; measured in bench/notes.md round 13).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve {
        /// Development setup: a generated secret when none is configured, and ready-made
        /// tokens printed at start.
        #[arg(long)]
        dev: bool,
    },
    /// Mint a token from the first configured HS256 secret (`auth.hs256_secrets`).
    Token {
        /// node, session, admin:read, admin:write (repeat for several).
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// For a node token: the node id it may hold (and take over when live).
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// For a peer without tenant: the cell it lives in (default: the default cell).
        #[arg(long)]
        cell: Option<String>,
        /// Lifetime: 45s, 30m, 1h, 2d (default: auth.default_ttl_s).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Print the effective configuration; exit non-zero if it is invalid.
    CheckConfig,
    /// Print `[[cells]]` entries whose names spread evenly over the primaries of the
    /// configured Redis Cluster (from its live slot map).
    CellNames {
        /// How many cells.
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Name stem: cells are `<base>-<n>`.
        #[arg(long, default_value = "cell")]
        base: String,
    },
    /// A job's attempts and routing explanation, or a session's state, read from Redis.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
        /// Print the JSON of the admin API instead of tables (before or after `job`/`session`).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Simulated nodes and sessions against running instances (demo, load, benchmarks).
    Sim(Box<switchyard::sim::SimArgs>),
}

#[derive(Subcommand)]
enum Inspect {
    /// `switchyard inspect job job-3f2a9c1b7d4e-0`
    Job { id: String },
    /// `switchyard inspect session s-9A1B2C3D`
    Session { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { dev: false });
    let dev = matches!(command, Command::Serve { dev: true });
    // The simulator is a client and `inspect` / `cell-names` read Redis directly: none of
    // them verifies a token, so none needs a key of its own.
    let client_only = matches!(
        command,
        Command::Sim(_) | Command::Inspect { .. } | Command::CellNames { .. }
    );
    let cfg = match Config::load_with(cli.config.as_deref(), |c| {
        if dev && !c.auth.is_open() && !c.auth.has_keys() {
            c.auth.hs256_secrets = vec![switchyard::auth::mint::dev_secret()];
        }
        if client_only && !c.auth.has_keys() {
            c.auth.mode = "open".into();
        }
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Sim(args) => switchyard::sim::main(*args),
        Command::Inspect { what, json } => inspect(&cfg, what, json),
        Command::CellNames { count, base } => {
            let out = runtime().and_then(|rt| {
                rt.block_on(switchyard::cells::spread::cells_toml(&cfg, &base, count))
            });
            match out {
                Ok(toml) => {
                    print!("{toml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard cell-names: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            scope,
            sub,
            tenant,
            cell,
            ttl,
        } => match token(&cfg, &scope, sub, tenant, cell, ttl.as_deref()) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard token: {e}");
                ExitCode::from(2)
            }
        },
        // The key files are read here as `serve` reads them at start: a configuration
        // `check-config` passes, `serve` starts with.
        Command::CheckConfig | Command::Serve { .. } if keys_unusable(&cfg) => ExitCode::from(2),
        Command::CheckConfig => match cfg.to_redacted_toml() {
            Ok(s) => {
                println!(
                    "# effective configuration (node liveness = {} ms)",
                    cfg.liveness_ms()
                );
                for a in cfg.advice() {
                    println!("# warning: {a}");
                }
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { dev } => {
            if dev {
                match switchyard::auth::mint::dev_setup_banner(&cfg.auth, &cfg.listen) {
                    Ok(b) => println!("{b}"),
                    Err(e) => {
                        eprintln!("switchyard: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let rt = match serve_runtime(cfg.instance.worker_threads) {
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
            // RUSTFLAGS set in the environment replace .cargo/config.toml's: say so, since
            // the build still works and only its cost per job shows the difference.
            #[cfg(not(tokio_unstable))]
            tracing::warn!(
                "built without --cfg tokio_unstable: tokio's LIFO slot stays on (correct, but \
                 ~1.8x the writes to Redis per job at saturation); see .cargo/config.toml"
            );
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

/// Whether `[auth]`'s key files cannot be used (unreadable, not a key): said on stderr.
fn keys_unusable(cfg: &Config) -> bool {
    match switchyard::auth::Auth::from_config(&cfg.auth) {
        Ok(_) => false,
        Err(e) => {
            eprintln!("switchyard: {e}");
            true
        }
    }
}

/// The runtime of `serve`: `threads` workers (0: tokio's default, one per CPU or
/// `TOKIO_WORKER_THREADS`).
fn serve_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    // A task woken by the running one goes to the back of the queue, not into tokio's
    // "LIFO slot" where it would run next. Every script call wakes the Redis connection's
    // writer task; run next, it wrote each call alone (1.92 writes to Redis per job at
    // saturation). Run after the other ready sockets it writes their calls in one batch
    // (1.07 per job), and the instance spent 0.77-0.93 x the CPU per job (bench/notes.md, round
    // 9). Sparse traffic has nothing else queued, so its order is unchanged.
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b.enable_all().build()
}

/// `switchyard inspect`: read Redis directly (see src/console/cli.rs for why).
/// A single-threaded runtime for the one-shot commands that talk to Redis.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

fn inspect(cfg: &Config, what: Inspect, json: bool) -> ExitCode {
    use switchyard::console::cli::{Target, run};
    let target = match what {
        Inspect::Job { id } => Target::Job(id),
        Inspect::Session { id } => Target::Session(id),
    };
    match runtime().and_then(|rt| rt.block_on(run(cfg, target, json))) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `switchyard token`: a token from the first HS256 secret, with the configured issuer and
/// audience.
fn token(
    cfg: &Config,
    scopes: &[String],
    sub: Option<String>,
    tenant: Option<String>,
    cell: Option<String>,
    ttl: Option<&str>,
) -> Result<String, String> {
    use switchyard::auth::{Scope, mint};
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s).ok_or_else(|| format!("unknown scope {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(c) = &cell
        && !cfg.cell_list().iter().any(|s| &s.name == c)
    {
        return Err(format!("{c:?} is not a configured cell"));
    }
    for v in [&sub, &tenant, &cell].into_iter().flatten() {
        if !switchyard::protocol::valid_id(v) {
            return Err(format!("{v:?}: use 1-64 of [A-Za-z0-9_.-]"));
        }
    }
    let ttl_s = match ttl {
        Some(t) => mint::parse_ttl(t)?,
        None => cfg.auth.default_ttl_s,
    };
    mint::sign(
        &cfg.auth,
        &mint::TokenSpec {
            scopes,
            sub,
            tenant,
            cell,
            ttl_s,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// The serve runtime runs tasks in the order they were woken: with tokio's LIFO slot on,
    /// the last task spawned or woken runs first, and the Redis connection's writer wrote
    /// each script call alone (see `serve_runtime`). Fails when built without
    /// `tokio_unstable` (.cargo/config.toml).
    #[test]
    fn the_serve_runtime_runs_woken_tasks_in_the_order_they_were_woken() {
        let rt = super::serve_runtime(1).expect("runtime");
        let order = rt.block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let l = log.clone();
            // Spawned from a worker, so both go to that worker's own queue.
            let outer = tokio::spawn(async move {
                let one = {
                    let l = l.clone();
                    tokio::spawn(async move { l.lock().expect("log").push(1) })
                };
                let two = tokio::spawn(async move { l.lock().expect("log").push(2) });
                (one, two)
            });
            let (one, two) = outer.await.expect("outer task");
            one.await.expect("task one");
            two.await.expect("task two");
            log.lock().expect("log").clone()
        });
        assert_eq!(order, vec![1, 2], "woken tasks ran last-in first-out");
    }
}

//! `switchyard sim`: simulated lingua nodes and client sessions against one or more
//! Switchyard instances — the demo, the load generator and the benchmark driver's workhorse.
//!
//! A run: start the nodes (bounded connect concurrency) and wait until they are registered;
//! start the sessions, which send their utterances and judge every terminal message; when
//! the sessions are done (or their grace period is over), stop the nodes with an orderly
//! close and fold every report into a [`Summary`]. Every loop is bounded by `--duration-s`,
//! `--grace-s` and fixed handshake timeouts, so a run always ends by itself.
//!
//! | module | concern |
//! |---|---|
//! | `args` | flags and their validation |
//! | `node` | one simulated lingua node |
//! | `session` | one simulated client session |
//! | `ledger` | a session's exactly-once / in-order judge (pure) |
//! | `audio` | Opus-sized fake audio |
//! | `tracker` | send times shared by both ends (dispatch latency), live counters |
//! | `progress` | the live progress line |
//! | `report` | summary: counts, throughput, percentiles, table, JSON |
//! | `ws` | the WebSocket client |

mod args;
mod audio;
mod ledger;
mod node;
mod progress;
mod report;
mod session;
mod tracker;
mod ws;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

pub use args::{Mode, SimArgs};
pub use report::{Percentiles, Summary};

use audio::AudioBank;
use node::NodeSpec;
use session::SessionSpec;
use tracker::{Live, Shared};

/// Entry point of the subcommand: run, print, and turn the verdict into an exit status
/// (0 pass, 1 something lost / duplicated / reordered, 2 the run could not be set up).
pub fn main(args: SimArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("switchyard sim: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard sim: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = rt.block_on(run(&args));
    if args.json {
        match serde_json::to_string(&summary) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("switchyard sim: {e}"),
        }
        if !args.quiet {
            eprint!("{}", summary.table());
        }
    } else {
        print!("{}", summary.table());
    }
    if !summary.passed() {
        ExitCode::from(1)
    } else if !summary.set_up() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// One whole simulation run.
pub async fn run(args: &SimArgs) -> Summary {
    let started = Instant::now();
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let bar = progress::Progress::start(shared.clone(), args.quiet);
    let stop_on_signal = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            stop_signal().await;
            let _ = stop_tx.send(true);
        })
    };

    let node_spec = Arc::new(NodeSpec {
        langs: args.langs.clone(),
        capacity: args.capacity,
        delay: args.delay_ms,
        fail_rate: args.fail_rate,
        mna_rate: args.mna_rate,
        no_result_rate: args.no_result_rate,
        heartbeat: args.heartbeat(),
        tts_audio: node::tts_audio(args.tts_bytes),
    });
    let urls = args.node_endpoints();
    let nodes: Vec<_> = (0..args.nodes)
        .map(|k| {
            let url = urls[k % urls.len()].clone();
            let run = node::run(
                url,
                node_spec.clone(),
                shared.clone(),
                gate.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(run)
        })
        .collect();
    wait_for_nodes(&shared, args.nodes as u64, &stop_rx).await;

    let utterance_ms = args.utterance_ms;
    let session_spec = Arc::new(SessionSpec {
        mode: args.mode,
        two_way: args.two_way,
        langs: args.langs.clone(),
        utterances: args.utterances,
        interval: Duration::from_millis(args.interval_ms),
        window: args.window,
        duration: Duration::from_secs(args.duration_s),
        grace: Duration::from_secs(args.grace_s),
        chunk_ms: args.chunk_ms,
        utterance_ms,
        realtime: args.realtime,
        reorder_window: Duration::from_millis(args.reorder_window_ms),
        client_heartbeat: Duration::from_millis(args.client_heartbeat_ms),
        audio: AudioBank::new(32, || utterance_ms.pick(), args.chunk_ms),
    });
    let urls = args.session_endpoints();
    let sessions: Vec<_> = (0..args.sessions)
        .map(|k| {
            let url = urls[k % urls.len()].clone();
            let run = session::run(
                url,
                session_spec.clone(),
                shared.clone(),
                gate.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(run)
        })
        .collect();
    // Each session ends by itself within duration + grace (+ handshakes); this bound only
    // guards against a bug.
    let bound = Duration::from_secs(args.duration_s + args.grace_s + 120);
    let mut session_reports = Vec::with_capacity(sessions.len());
    for h in sessions {
        match tokio::time::timeout(bound, h).await {
            Ok(Ok(r)) => session_reports.push(r),
            _ => session_reports.push(session::SessionReport {
                setup_error: Some("session task did not finish".into()),
                ..Default::default()
            }),
        }
    }
    if args.sessions == 0 {
        // Nodes only: they heartbeat for the run's duration.
        let end = tokio::time::Instant::from_std(started) + Duration::from_secs(args.duration_s);
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = stop.changed() => {}
        }
    }
    let busy = shared.busy_window();
    let _ = stop_tx.send(true);
    let mut node_reports = Vec::with_capacity(nodes.len());
    for h in nodes {
        match tokio::time::timeout(Duration::from_secs(40), h).await {
            Ok(Ok(r)) => node_reports.push(r),
            _ => node_reports.push(node::NodeReport::default()),
        }
    }
    stop_on_signal.abort();
    bar.finish();
    Summary::build(node_reports, session_reports, started.elapsed(), busy)
}

/// SIGINT or SIGTERM: stop sending, close every connection in order, print the summary
/// (bench/run.sh stops long-running sims with SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Wait until every node registered or failed to (at most 120 s, or until stopped).
async fn wait_for_nodes(shared: &Shared, n: u64, stop: &watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline && !*stop.borrow() {
        let live = &shared.live;
        if Live::get(&live.nodes_ready) + Live::get(&live.setup_failed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

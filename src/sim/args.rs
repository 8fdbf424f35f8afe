//! Command-line flags of `switchyard sim`, with their validation.
//!
//! Kept apart from the run itself so `switchyard sim --help` reads as the whole contract of
//! the load generator, and every other sim module receives already-checked values.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// How a simulated session sends its speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Pre-cut `utterance` messages with a client-chosen `utterance_index`.
    Utterance,
    /// `audio_chunk` frames (Opus packets, 2-byte LE length prefix); the last chunk of each
    /// utterance carries `is_final: true`, so the scheduler cuts it (manual cut).
    Stream,
}

/// An inclusive `MIN-MAX` range (a single number means MIN = MAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

impl Range {
    /// A uniformly random value in the range.
    pub fn pick(&self) -> u64 {
        if self.max <= self.min {
            self.min
        } else {
            rand::random_range(self.min..=self.max)
        }
    }
}

fn parse_range(s: &str) -> Result<Range, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let min: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected MIN-MAX"))?;
    let max: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected MIN-MAX"))?;
    if max < min {
        return Err(format!("{s:?}: MAX is below MIN"));
    }
    Ok(Range { min, max })
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is not a rate between 0 and 1"))
    }
}

/// Simulated lingua nodes and sessions against one or more Switchyard instances.
///
/// Nodes register, heartbeat and answer every `job_assign` like a lingua node (with
/// configurable delay, failures and silence); sessions send utterances and check that each
/// gets exactly one terminal message, in order. Exit status: 0 when nothing was lost,
/// duplicated or reordered; 1 when something was; 2 when the run could not be set up.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Scheduler base URL (`ws://host:port`), repeatable: nodes and sessions are spread over
    /// the URLs round-robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:5010")]
    pub urls: Vec<String>,
    /// Base URLs for nodes only (repeatable; default: --url).
    #[arg(long = "node-url")]
    pub node_urls: Vec<String>,
    /// Base URLs for sessions only (repeatable; default: --url).
    #[arg(long = "session-url")]
    pub session_urls: Vec<String>,
    /// Credential of the simulated nodes (`node` scope), sent as `?access_token=`.
    #[arg(long, env = "SWITCHYARD_SIM_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// Credential of the simulated sessions (`session` scope), sent as `?access_token=`.
    #[arg(long, env = "SWITCHYARD_SIM_SESSION_TOKEN", hide_env_values = true)]
    pub session_token: Option<String>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Simulated sessions.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Utterances per session (0: idle sessions that stay connected for --duration-s).
    #[arg(long, default_value_t = 20)]
    pub utterances: u64,
    /// Open loop: a session starts an utterance every this many ms (0: as fast as --window
    /// allows).
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Closed loop: at most this many utterances without a terminal message per session
    /// (with --interval-ms 0 for a pure closed loop, e.g. a saturation run).
    #[arg(long)]
    pub window: Option<u64>,
    /// `utterance` (pre-cut) or `stream` (audio_chunk + is_final).
    #[arg(long, value_enum, default_value_t = Mode::Utterance)]
    pub mode: Mode,
    /// Sessions use `two_way_auto` (src auto, lang_a/lang_b) instead of one-way pairs.
    #[arg(long)]
    pub two_way: bool,
    /// `max_concurrent_jobs` each node announces.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// Node processing time per job, uniform in MIN-MAX ms (0-0: answer at once).
    #[arg(long, default_value = "50-200", value_parser = parse_range)]
    pub delay_ms: Range,
    /// Decoded size of the TTS audio each result carries (0: the 10-byte placeholder). Real
    /// results carry seconds of speech, tens of KB.
    #[arg(long, default_value_t = 0)]
    pub tts_bytes: usize,
    /// Share of jobs a node fails with PROCESSING_ERROR.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// Share of jobs a node answers with MODEL_NOT_AVAILABLE (the scheduler fails over).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub mna_rate: f64,
    /// Share of jobs a node never answers (the scheduler's timeout and failover end them).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub no_result_rate: f64,
    /// Languages every node serves (all directed pairs); sessions pick two at random.
    #[arg(long, default_value = "zh,en", value_delimiter = ',')]
    pub langs: Vec<String>,
    /// Sending stops after this many seconds (idle runs last exactly this long).
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// After sending stops, wait at most this long for outstanding terminal messages; what
    /// has none by then is lost. Must cover the scheduler's run timeout × attempts when
    /// --no-result-rate > 0.
    #[arg(long, default_value_t = 15)]
    pub grace_s: u64,
    /// Node heartbeat interval (the lingua node uses 15000).
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Session `client_heartbeat` interval (the web client uses 30000).
    #[arg(long, default_value_t = 30_000)]
    pub client_heartbeat_ms: u64,
    /// Audio per utterance, uniform in MIN-MAX ms (20 ms Opus frames of ≈ 60 bytes).
    #[arg(long, default_value = "1000-3000", value_parser = parse_range)]
    pub utterance_ms: Range,
    /// Stream mode: audio per audio_chunk frame, in ms.
    #[arg(long, default_value_t = 200)]
    pub chunk_ms: u64,
    /// Stream mode: pace chunks at audio speed (default: send an utterance's chunks at once).
    #[arg(long)]
    pub realtime: bool,
    /// The scheduler's `session.reorder_window_ms`: a later result overtaking an earlier one
    /// is an order violation unless the window can have expired.
    #[arg(long, default_value_t = 2000)]
    pub reorder_window_ms: u64,
    /// Connections being opened at once (bounds the connect storm of large runs).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Print the summary as one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line and no table on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl SimArgs {
    /// Check combinations clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes > 50_000 || self.sessions > 50_000 {
            return Err("--nodes and --sessions are limited to 50000 each".into());
        }
        if self.fail_rate + self.mna_rate + self.no_result_rate > 1.0 {
            return Err("--fail-rate + --mna-rate + --no-result-rate must not exceed 1".into());
        }
        let mut langs = self.langs.clone();
        langs.sort();
        langs.dedup();
        if langs.len() < 2 || langs.iter().any(|l| l.is_empty() || l == "auto") {
            return Err("--langs needs at least two different language codes".into());
        }
        if self.capacity == 0 {
            return Err("--capacity must be at least 1".into());
        }
        if self.window == Some(0) {
            return Err("--window must be at least 1".into());
        }
        if self.duration_s == 0 || self.duration_s > 24 * 3600 {
            return Err("--duration-s must be 1..=86400".into());
        }
        if self.grace_s > 3600 {
            return Err("--grace-s must be at most 3600".into());
        }
        if self.heartbeat_ms < 10 || self.client_heartbeat_ms < 10 {
            return Err("--heartbeat-ms and --client-heartbeat-ms must be at least 10".into());
        }
        if self.utterance_ms.min < 20 {
            return Err("--utterance-ms must be at least 20 (one Opus frame)".into());
        }
        if self.chunk_ms < 20 {
            return Err("--chunk-ms must be at least 20".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        for u in self.all_urls() {
            if !(u.starts_with("ws://") || u.starts_with("http://")) {
                return Err(format!("{u}: URLs start with ws:// (or http://)"));
            }
        }
        Ok(())
    }

    fn all_urls(&self) -> impl Iterator<Item = &String> {
        self.urls
            .iter()
            .chain(&self.node_urls)
            .chain(&self.session_urls)
    }

    /// The WebSocket URLs nodes connect to, round-robin.
    pub fn node_endpoints(&self) -> Vec<String> {
        endpoints(
            self.pick(&self.node_urls),
            "/ws/node",
            self.node_token.as_deref(),
        )
    }

    /// The WebSocket URLs sessions connect to, round-robin.
    pub fn session_endpoints(&self) -> Vec<String> {
        endpoints(
            self.pick(&self.session_urls),
            "/ws/session",
            self.session_token.as_deref(),
        )
    }

    fn pick<'a>(&'a self, specific: &'a [String]) -> &'a [String] {
        if specific.is_empty() {
            &self.urls
        } else {
            specific
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
}

fn endpoints(bases: &[String], path: &str, token: Option<&str>) -> Vec<String> {
    bases
        .iter()
        .map(|b| {
            let b = b.trim_end_matches('/');
            let b = b
                .strip_prefix("http://")
                .map(|rest| format!("ws://{rest}"))
                .unwrap_or_else(|| b.to_string());
            match token {
                Some(t) => format!("{b}{path}?access_token={t}"),
                None => format!("{b}{path}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject_inverted_bounds() {
        assert_eq!(parse_range("5-10"), Ok(Range { min: 5, max: 10 }));
        assert_eq!(parse_range("7"), Ok(Range { min: 7, max: 7 }));
        assert!(parse_range("10-5").is_err());
        assert!(parse_range("a-b").is_err());
        let r = Range { min: 3, max: 4 };
        assert!((3..=4).contains(&r.pick()));
    }

    #[test]
    fn endpoints_append_the_path_and_accept_http() {
        let e = endpoints(
            &["http://127.0.0.1:5010/".into(), "ws://h:1".into()],
            "/ws/node",
            None,
        );
        assert_eq!(e, ["ws://127.0.0.1:5010/ws/node", "ws://h:1/ws/node"]);
        let e = endpoints(&["ws://h:1".into()], "/ws/session", Some("abc"));
        assert_eq!(e, ["ws://h:1/ws/session?access_token=abc"]);
    }
}

//! What a script call carries: its arguments ([`Args`], borrowed where the caller holds
//! them) and the packed configuration every call passes as ARGV[3] ([`script_config`],
//! unpacked by `CFG_NAMES` in lua/includes/ctx.lua).

use std::borrow::Cow;

use crate::config::Config;

/// Arguments of one script call, starting with the shared context (ARGV[1..4]). Text the
/// caller holds is borrowed, not copied: each argument is copied once, into the command
/// (the job audio of `submit` and the translation_result of `job_result` are kilobytes).
pub struct Args<'a>(pub(super) Vec<Cow<'a, [u8]>>);

/// A value that can be a script argument: borrowed text or bytes, or an owned string or
/// number.
pub trait Arg<'a> {
    fn into_arg(self) -> Cow<'a, [u8]>;
}

impl<'a, T: AsRef<[u8]> + ?Sized> Arg<'a> for &'a T {
    fn into_arg(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self.as_ref())
    }
}

impl Arg<'_> for String {
    fn into_arg(self) -> Cow<'static, [u8]> {
        Cow::Owned(self.into_bytes())
    }
}

macro_rules! number_args {
    ($($t:ty),*) => {$(
        impl Arg<'_> for $t {
            fn into_arg(self) -> Cow<'static, [u8]> {
                Cow::Owned(self.to_string().into_bytes())
            }
        }
    )*};
}

number_args!(u8, u16, u32, u64, usize, i32, i64);

impl<'a> Args<'a> {
    pub fn s(mut self, v: impl Arg<'a>) -> Self {
        self.0.push(v.into_arg());
        self
    }

    pub fn b(mut self, v: &'a [u8]) -> Self {
        self.0.push(Cow::Borrowed(v));
        self
    }

    /// `k1, v1, k2, v2, ...` for a variable-length field list.
    pub fn fields(mut self, f: &'a [(&'static str, String)]) -> Self {
        for (k, v) in f {
            self.0.push(Cow::Borrowed(k.as_bytes()));
            self.0.push(Cow::Borrowed(v.as_bytes()));
        }
        self
    }

    pub fn all<I: IntoIterator<Item = String>>(mut self, items: I) -> Self {
        self.0
            .extend(items.into_iter().map(|s| Cow::Owned(s.into_bytes())));
        self
    }

    /// The raw arguments (tests call scripts with arguments the typed calls never send).
    pub fn into_inner(self) -> Vec<Vec<u8>> {
        self.0.into_iter().map(Cow::into_owned).collect()
    }
}

/// The names of the numbers scripts read as CFG, in the order [`script_config`] packs them
/// and `lua/includes/ctx.lua` (`CFG_NAMES`) unpacks them.
pub(crate) const CFG_NAMES: [&str; 31] = [
    "liveness",
    "node_retention",
    "batch",
    "max_attempts",
    "queue_wait",
    "queue_max",
    "scan",
    "ack_timeout",
    "run_timeout",
    "job_ttl",
    "choices",
    "sample",
    "affinity",
    "mna_ms",
    "mna_per_min",
    "explain",
    "session_ttl",
    "pause",
    "max_duration",
    "max_bytes",
    "playback_grace",
    "reorder",
    "max_ahead",
    "retention",
    "group_window",
    "min_cut",
    "presence_ttl",
    "inbox_max",
    "takeover_batch",
    "cluster",
    "fleet_nodes",
];

/// The timings and limits scripts read as CFG (see lua/includes/ctx.lua): the numbers of
/// [`CFG_NAMES`] in that order, each a little-endian f64 (a Lua number), which a script
/// unpacks with one `struct.unpack` (decoding the same as JSON cost ~20 µs of Redis CPU
/// per call; issue 14).
pub(super) fn script_config(cfg: &Config) -> Vec<u8> {
    let j = &cfg.jobs;
    let s = &cfg.session;
    let values: [(&str, f64); 31] = [
        ("liveness", cfg.liveness_ms() as f64),
        ("node_retention", cfg.node.offline_retention_ms as f64),
        ("batch", cfg.sweep.batch as f64),
        ("max_attempts", j.max_attempts as f64),
        ("queue_wait", j.queue_wait_ms as f64),
        ("queue_max", j.queue_max as f64),
        ("scan", j.queue_scan as f64),
        ("ack_timeout", j.ack_timeout_ms as f64),
        ("run_timeout", j.run_timeout_ms as f64),
        ("job_ttl", j.record_ttl_ms as f64),
        ("choices", j.choices as f64),
        ("sample", j.sample as f64),
        ("affinity", f64::from(u8::from(j.session_affinity))),
        ("mna_ms", j.model_unavailable_ms as f64),
        ("mna_per_min", j.model_unavailable_per_minute as f64),
        ("explain", f64::from(u8::from(j.explain))),
        ("session_ttl", s.idle_ttl_ms as f64),
        ("pause", s.pause_ms as f64),
        ("max_duration", s.max_duration_ms as f64),
        ("max_bytes", s.max_buffer_bytes as f64),
        ("playback_grace", s.playback_grace_ms as f64),
        ("reorder", s.reorder_window_ms as f64),
        ("max_ahead", s.max_index_ahead as f64),
        ("retention", s.result_retention_ms as f64),
        ("group_window", s.group_window_ms as f64),
        ("min_cut", s.min_cut_ms as f64),
        ("presence_ttl", cfg.instance.presence_ttl_ms as f64),
        ("inbox_max", cfg.inbox.max_len as f64),
        ("takeover_batch", cfg.inbox.takeover_batch as f64),
        (
            "cluster",
            f64::from(u8::from(
                cfg.redis.mode == crate::config::RedisMode::Cluster,
            )),
        ),
        ("fleet_nodes", cfg.limits.max_nodes_per_credential as f64),
    ];
    debug_assert!(values.iter().map(|v| v.0).eq(CFG_NAMES.iter().copied()));
    values.iter().flat_map(|(_, v)| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_unpacks_the_config_in_the_order_rust_packs_it() {
        let ctx = include_str!("../../lua/includes/ctx.lua");
        let start = ctx
            .find("local CFG_NAMES = {")
            .expect("CFG_NAMES in ctx.lua");
        let list = &ctx[start..];
        let list = &list[list.find('{').unwrap_or(0) + 1..list.find('}').unwrap_or(0)];
        let names: Vec<&str> = list
            .split(',')
            .map(|n| n.trim().trim_matches('\''))
            .filter(|n| !n.is_empty())
            .collect();
        assert_eq!(names, CFG_NAMES);
        let packed = script_config(&Config::default());
        assert_eq!(packed.len(), 8 * CFG_NAMES.len());
    }
}

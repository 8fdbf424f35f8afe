//! The Lua scripts of `lua/`, compiled into the binary and loaded into Redis.
//!
//! Each `lua/NAME.lua` may pull shared fragments from `lua/includes/` with a line
//! `--!include NAME`; they are inlined here at start-up, so no logic is copied between
//! scripts. Calls go through EVALSHA; after a NOSCRIPT (Redis restarted or SCRIPT FLUSH)
//! the `redis` crate loads the script and retries once, transparently.

use redis::Script as RedisScript;

/// Declares the `Script` enum from one table: variant, file name (= metric label).
macro_rules! scripts {
    ($($variant:ident => $file:literal),+ $(,)?) => {
        /// One entry per `lua/*.lua`; the name is the metric label and the file name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Script { $($variant),+ }

        impl Script {
            pub const ALL: &'static [Script] = &[$(Script::$variant),+];

            pub fn name(self) -> &'static str {
                match self { $(Script::$variant => $file),+ }
            }

            fn source(self) -> &'static str {
                match self { $(Script::$variant => include_str!(concat!("../../lua/", $file, ".lua"))),+ }
            }
        }
    };
}

scripts! {
    Register => "register",
    Heartbeat => "heartbeat",
    NodeOffline => "node_offline",
    Sweep => "sweep",
    SessionOpen => "session_open",
    SessionTouch => "session_touch",
    SessionClose => "session_close",
    AudioAppend => "audio_append",
    Submit => "submit",
    JobAck => "job_ack",
    JobResult => "job_result",
    JobPartial => "job_partial",
    InstanceBeat => "instance_beat",
    SessionResume => "session_resume",
    NodeDrain => "node_drain",
}

/// Shared fragments of `lua/includes/`, inlined where a script says `--!include NAME`.
macro_rules! includes {
    ($($name:literal),+ $(,)?) => {
        fn include(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../../lua/includes/", $name, ".lua"))),)+
                _ => None,
            }
        }
    };
}

includes!(
    "ctx", "args", "pools", "deliver", "results", "dispatch", "offline", "groups", "submit", "cut",
    "liveness"
);

/// Inline every `--!include NAME` line. Panics only on a missing include, which is a
/// build-time mistake caught by the unit test below.
fn expand(src: &str) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    for line in src.lines() {
        match line.strip_prefix("--!include ") {
            Some(name) => {
                let name = name.trim();
                let body = include(name).unwrap_or_else(|| panic!("unknown lua include {name}"));
                out.push_str(body);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// All scripts, expanded and hashed once per process.
pub struct Scripts {
    scripts: Vec<(Script, RedisScript)>,
    /// The expanded sources, for `SCRIPT LOAD` routed to one cluster node.
    sources: Vec<String>,
}

impl Scripts {
    pub fn new() -> Self {
        let sources: Vec<String> = Script::ALL.iter().map(|s| expand(s.source())).collect();
        let scripts = Script::ALL
            .iter()
            .zip(&sources)
            .map(|(s, src)| (*s, RedisScript::new(src)));
        Self {
            scripts: scripts.collect(),
            sources,
        }
    }

    pub fn get(&self, s: Script) -> &RedisScript {
        // `scripts` follows the declaration order of `Script`, so the index is the variant.
        &self.scripts[s as usize].1
    }

    /// The expanded source of `s`.
    pub fn source(&self, s: Script) -> &str {
        &self.sources[s as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Script, &RedisScript)> {
        self.scripts.iter().map(|(k, v)| (*k, v))
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_expands_and_documents_its_contract() {
        for &s in Script::ALL {
            let text = expand(s.source());
            assert!(
                !text.contains("--!include"),
                "{} keeps an include",
                s.name()
            );
            let head: String = s.source().lines().take(25).collect();
            assert!(
                head.contains("KEYS[1]") && head.contains("ARGV[1"),
                "{}",
                s.name()
            );
            assert!(head.contains("Output"), "{} lists its replies", s.name());
        }
    }
}

//! The Lua scripts of `lua/`, compiled into the binary and loaded into Redis.
//!
//! Each `lua/NAME.lua` may use shared fragments of `lua/includes/` (a line
//! `--!include NAME` says which); they are assembled here into one Redis Functions library
//! (see [`Scripts`]), so no logic is copied between scripts. Calls go through `FCALL`;
//! when the library is missing (Redis restarted without persistence, `FUNCTION FLUSH`)
//! the store loads it and retries once, transparently.

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

impl Script {
    /// Whether a call waits for `redis.wait_replicas` after it committed (`WAIT`): every
    /// script whose answer a client relies on (a session opened with its resume token,
    /// audio, an utterance, a job's ack or result, a close). A node's `register`, a
    /// `session_resume` and the maintenance calls (`instance_beat`, `sweep`) do not: what a
    /// failover loses of them heals by itself (the node's next heartbeat is answered
    /// `missing` and re-registers, the resumed session's next message is refused and its
    /// client resumes again, beats and sweeps run again), while failing them after their
    /// commit would undo on the instance what the primary holds (a connection unbound, a
    /// lapse unseen).
    pub fn waits_for_replicas(self) -> bool {
        !matches!(
            self,
            Script::Register | Script::SessionResume | Script::InstanceBeat | Script::Sweep
        )
    }
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
    "ctx", "args", "pools", "deliver", "results", "explain", "pick", "dispatch", "offline",
    "groups", "submit", "cut", "liveness", "epoch", "fleet"
);

/// Include order in the library: every fragment after the ones it requires.
const LIBRARY_ORDER: &[&str] = &[
    "ctx", "args", "pools", "deliver", "results", "explain", "pick", "dispatch", "offline",
    "groups", "submit", "cut", "liveness", "epoch", "fleet",
];

/// The includes a script names (`--!include NAME` lines), in its order.
#[cfg(test)]
fn includes_of(src: &str) -> impl Iterator<Item = &str> {
    src.lines()
        .filter_map(|l| l.strip_prefix("--!include "))
        .map(str::trim)
}

/// A script's body: its text without the include lines (kept as empty lines, so Redis'
/// error line numbers stay close to the file's).
fn body_of(src: &str) -> String {
    src.lines()
        .map(|l| if l.starts_with("--!include ") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// All scripts as one Redis Functions library (`FUNCTION LOAD`), built once per process.
///
/// Every include is defined once at the library's top level and each script's body becomes
/// a function that runs after `begin()` (ctx.lua) set its call context. So the ~80 closures
/// and constant tables of the includes are created when the library loads, not on every
/// call as with EVALSHA, and Redis' Lua heap holds one copy of them instead of one per
/// script (issue 14: the prologue and its garbage were ~10 % of Redis' CPU per job).
///
/// Names carry the library's version (a hash of its text): `switchyard_<v>` with functions
/// `<script>_<v>`, so instances of two versions can share a Redis during a rolling upgrade,
/// each calling its own code.
pub struct Scripts {
    library: String,
    version: String,
    functions: Vec<String>,
}

impl Scripts {
    pub fn new() -> Self {
        use sha2::{Digest, Sha256};
        let mut code = String::new();
        for name in LIBRARY_ORDER {
            let body = include(name).unwrap_or_else(|| panic!("unknown lua include {name}"));
            code.push_str(&format!("-- ===== include {name} =====\n{body}\n"));
        }
        code.push_str("local SCRIPTS = {}\n");
        for s in Script::ALL {
            code.push_str(&format!(
                "-- ===== {name}.lua =====\nSCRIPTS['{name}'] = function()\n{body}\nend\n",
                name = s.name(),
                body = body_of(s.source())
            ));
        }
        let version: String = Sha256::digest(code.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let functions: Vec<String> = Script::ALL
            .iter()
            .map(|s| format!("{}_{version}", s.name()))
            .collect();
        // One registration per script (no loop: while a library loads, Redis offers no
        // global but `redis`, so not even `pairs`).
        let mut library = format!("#!lua name=switchyard_{version}\n{code}");
        for s in Script::ALL {
            library.push_str(&format!(
                "redis.register_function('{name}_{version}', function(keys, args) \
                 begin(keys, args) return SCRIPTS['{name}']() end)\n",
                name = s.name()
            ));
        }
        Self {
            library,
            version,
            functions,
        }
    }

    /// The library's source, for `FUNCTION LOAD`.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// The library's name in Redis (`FUNCTION LIST LIBRARYNAME ...`).
    pub fn library_name(&self) -> String {
        format!("switchyard_{}", self.version)
    }

    /// The name of `s`'s function in Redis.
    pub fn function(&self, s: Script) -> &str {
        // `functions` follows the declaration order of `Script`, so the index is the variant.
        &self.functions[s as usize]
    }

    /// `FCALL <function> <#keys> keys... args...`, sized once: every argument (the ~8 KB
    /// job audio of `submit` among them) is copied into the command exactly once.
    pub fn fcall<'a>(
        &self,
        s: Script,
        keys: &[String],
        args: impl IntoIterator<Item = &'a [u8]> + Clone,
    ) -> redis::Cmd {
        let (count, bytes) = args
            .clone()
            .into_iter()
            .fold((0, 0), |(n, b), a| (n + 1, b + a.len()));
        let size = 64 + bytes + keys.iter().map(String::len).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(3 + keys.len() + count, size);
        cmd.arg("FCALL").arg(self.function(s)).arg(keys.len());
        for k in keys {
            cmd.arg(k);
        }
        for a in args {
            cmd.arg(a);
        }
        cmd
    }
}

/// Whether `e` says the called function is not loaded on that Redis (a restart without
/// persistence, `FUNCTION FLUSH`, a fresh replica promoted before it synced).
pub fn function_missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
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
    fn every_script_documents_its_contract_and_its_includes_are_in_the_library() {
        for &s in Script::ALL {
            for name in includes_of(s.source()) {
                assert!(
                    include(name).is_some(),
                    "{}: unknown include {name}",
                    s.name()
                );
                assert!(
                    LIBRARY_ORDER.contains(&name),
                    "{}: {name} not in LIBRARY_ORDER",
                    s.name()
                );
            }
            // the header: the comment block the file opens with
            let src = s.source();
            let head = &src[..src.find("]]").unwrap_or(0)];
            assert!(
                head.contains("KEYS[1") && head.contains("ARGV[1"),
                "{}",
                s.name()
            );
            assert!(head.contains("Output"), "{} lists its replies", s.name());
        }
    }

    #[test]
    fn the_library_names_its_version_and_registers_every_script() {
        let lib = Scripts::new();
        assert!(
            lib.library()
                .starts_with(&format!("#!lua name={}\n", lib.library_name()))
        );
        assert!(!lib.library().contains("--!include"));
        for &s in Script::ALL {
            assert!(lib.function(s).starts_with(s.name()));
            assert!(lib.library().contains(&format!("SCRIPTS['{}']", s.name())));
        }
    }
}

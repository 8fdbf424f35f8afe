//! What a node can serve, and the pools that follows from it (PROTOCOL.md "Pool rule").
//!
//! This is a pure function of the node's latest registration/heartbeat, so it is tested
//! here without Redis; the `register`/`heartbeat` scripts apply the resulting pool list to
//! Redis as a difference against what the node was in before.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::node::{CapabilityByType, LangPair, LanguageCapabilities, NodeRegister};
use crate::protocol::session::Pipeline;
use crate::protocol::{valid_id, valid_lang};

/// The capability-bearing part of a node's state, merged from register + heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub langs: LanguageCapabilities,
    pub pairs: Option<Vec<LangPair>>,
    pub services: Vec<CapabilityByType>,
    pub tenant: Option<String>,
    pub accept_public: bool,
}

/// Why a node's announced capabilities were refused (`INVALID_CAPABILITY_SCHEMA`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    #[error("invalid language code {0:?} (expected 1-16 of [A-Za-z0-9_-], not \"auto\")")]
    Lang(String),
    #[error("invalid tenant_id {0:?} (expected 1-64 of [A-Za-z0-9_.-])")]
    Tenant(String),
    /// A service `type` that could not be stored in the node's capability signature (whose
    /// separators are `|`, `,`, `;` and spaces), or too many of them.
    #[error(
        "invalid capability_by_type: at most {MAX_SERVICES} entries, each type 1-64 of [A-Za-z0-9_.-] ({0})"
    )]
    Service(String),
    #[error(
        "too many languages or pairs ({0}; at most {MAX_LANGS} languages in the three lists together, {MAX_POOLS} pools, {MAX_PAIRS} pairs)"
    )]
    TooMany(usize),
}

/// Languages in `asr_languages`, `semantic_languages` and `tts_languages` together (the rule
/// of every earlier version: a node it accepted, such as one with Whisper's 99 ASR
/// languages and a few others, is not refused after an upgrade).
const MAX_LANGS: usize = 192;
/// Pools a node may be in (64 × 64 + 64: a matrix of 64 languages each way). Larger ones
/// are refused: a 96 × 96 node (9,312 pools) failed every script ending in `offer()` before
/// it checked queues in chunks, and it still costs a command per pool at registration and
/// an `LRANGE` per pool whenever a queue exists, for no language service anyone runs.
const MAX_POOLS: usize = 4_160;
const MAX_PAIRS: usize = 512;
/// Entries of `capability_by_type` (a node runs a handful of services).
const MAX_SERVICES: usize = 64;

impl Capabilities {
    pub fn from_register(r: &NodeRegister) -> Result<Self, CapabilityError> {
        let c = Self {
            langs: r.language_capabilities.clone().unwrap_or_default(),
            pairs: r.supported_language_pairs.clone(),
            services: r.capability_by_type.clone(),
            tenant: r.tenant_id.clone().filter(|t| !t.is_empty()),
            accept_public: r.accept_public_jobs.unwrap_or(true),
        };
        c.validate()?;
        Ok(c)
    }

    /// Apply what a heartbeat says; fields it omits keep their registered value.
    pub fn merged(
        &self,
        langs: Option<&LanguageCapabilities>,
        services: Option<&[CapabilityByType]>,
    ) -> Result<Self, CapabilityError> {
        let mut c = self.clone();
        if let Some(l) = langs {
            c.langs = l.clone();
        }
        if let Some(s) = services {
            c.services = s.to_vec();
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), CapabilityError> {
        let l = &self.langs;
        let n = l.asr_languages.len() + l.semantic_languages.len() + l.tts_languages.len();
        if n > MAX_LANGS {
            return Err(CapabilityError::TooMany(n));
        }
        let pools = self.pools().len();
        if pools > MAX_POOLS {
            return Err(CapabilityError::TooMany(pools));
        }
        let pairs = self.pairs.as_deref().unwrap_or_default();
        if pairs.len() > MAX_PAIRS {
            return Err(CapabilityError::TooMany(pairs.len()));
        }
        let all = l
            .asr_languages
            .iter()
            .chain(&l.semantic_languages)
            .chain(&l.tts_languages);
        let all = all.chain(pairs.iter().flat_map(|p| [&p.src, &p.tgt]));
        for code in all {
            if !valid_lang(code) || code == "auto" {
                return Err(CapabilityError::Lang(code.clone()));
            }
        }
        if let Some(t) = &self.tenant
            && !valid_id(t)
        {
            return Err(CapabilityError::Tenant(t.clone()));
        }
        if self.services.len() > MAX_SERVICES {
            return Err(CapabilityError::Service(format!(
                "{} entries",
                self.services.len()
            )));
        }
        // (an absent type is "", as lingua nodes may send it: never ready for any job)
        if let Some(s) = self
            .services
            .iter()
            .find(|s| !s.kind.is_empty() && !valid_id(&s.kind))
        {
            let shown: String = s.kind.chars().take(32).collect();
            return Err(CapabilityError::Service(format!("type {shown:?}")));
        }
        Ok(())
    }

    /// Directed pairs this node serves: explicit pairs, else asr × semantic languages.
    pub fn served_pairs(&self) -> BTreeSet<(String, String)> {
        match &self.pairs {
            Some(pairs) => pairs
                .iter()
                .map(|p| (p.src.clone(), p.tgt.clone()))
                .collect(),
            None => {
                let l = &self.langs;
                let mut out = BTreeSet::new();
                for s in &l.asr_languages {
                    for t in &l.semantic_languages {
                        out.insert((s.clone(), t.clone()));
                    }
                }
                out
            }
        }
    }

    /// The pool names (without key prefix) this node belongs to: `pub:zh:en`,
    /// `pub:auto:en` (≥ 2 distinct sources reach `en`), or `tenant:<id>:zh:en` for a node
    /// with a tenant. A node without tenant that refuses public jobs is in no pool.
    pub fn pools(&self) -> BTreeSet<String> {
        let scope = match (&self.tenant, self.accept_public) {
            (Some(t), _) => format!("tenant:{t}"),
            (None, true) => "pub".to_string(),
            (None, false) => return BTreeSet::new(),
        };
        let pairs = self.served_pairs();
        let mut sources_per_target: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, tgt) in &pairs {
            *sources_per_target.entry(tgt.as_str()).or_default() += 1;
        }
        let mut out: BTreeSet<String> = pairs
            .iter()
            .map(|(s, t)| format!("{scope}:{s}:{t}"))
            .collect();
        for (tgt, n) in sources_per_target {
            if n >= 2 {
                out.insert(format!("{scope}:auto:{tgt}"));
            }
        }
        out
    }

    /// Comma-separated ready service types (`asr,nmt,tts`), as stored on the node hash.
    pub fn ready_services(&self) -> String {
        let set: BTreeSet<&str> = self
            .services
            .iter()
            .filter(|s| s.ready)
            .map(|s| s.kind.as_str())
            .collect();
        set.into_iter().collect::<Vec<_>>().join(",")
    }

    /// A stable signature; the heartbeat script recomputes pools only when it changes.
    pub fn signature(&self) -> String {
        let pools = self.pools().into_iter().collect::<Vec<_>>().join(" ");
        let l = &self.langs;
        let langs =
            [&l.asr_languages, &l.semantic_languages, &l.tts_languages].map(|v| v.join(","));
        format!("{}|{}|{}", self.ready_services(), langs.join(";"), pools)
    }
}

/// Where a job may run: candidate pools in order of preference, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// csv of pool entries: `primary` or `primary|reverse` (two-way: a node must be in both).
    pub pools: String,
    /// csv of the service types the pipeline uses.
    pub needs: String,
    /// `zh→en`, `auto→en`, `zh↔en`: for messages and logs.
    pub pair: String,
}

/// The job's languages and scope, as a session or an utterance states them.
pub struct RouteRequest<'a> {
    pub tenant: Option<&'a str>,
    pub strict: bool,
    pub two_way: bool,
    pub src: &'a str,
    pub tgt: &'a str,
    pub lang_a: Option<&'a str>,
    pub lang_b: Option<&'a str>,
    /// The services it uses (`use_semantic` and `use_tone` count only when `true`).
    pub pipeline: Pipeline,
}

/// PROTOCOL.md "Pool rule", job side: tenant pool first, then the public pool unless the
/// tenant is strict. `two_way_auto` needs a node serving both a→b and b→a; a one-way
/// `auto` source uses the `auto:tgt` pool.
pub fn route(r: &RouteRequest) -> Result<Route, String> {
    let check = |code: &str, what: &str| {
        if valid_lang(code) {
            Ok(())
        } else {
            Err(format!("invalid {what} {code:?}"))
        }
    };
    let mut scopes = Vec::new();
    if let Some(t) = r.tenant {
        scopes.push(format!("tenant:{t}"));
    }
    if r.tenant.is_none() || !r.strict {
        scopes.push("pub".to_string());
    }
    let (entries, pair): (Vec<String>, String) = if r.two_way {
        let (Some(a), Some(b)) = (r.lang_a, r.lang_b) else {
            return Err("two_way_auto needs lang_a and lang_b".into());
        };
        check(a, "lang_a")?;
        check(b, "lang_b")?;
        if a == "auto" || b == "auto" || a == b {
            return Err("lang_a and lang_b must be two different languages".into());
        }
        (
            scopes
                .iter()
                .map(|s| format!("{s}:{a}:{b}|{s}:{b}:{a}"))
                .collect(),
            format!("{a}↔{b}"),
        )
    } else {
        check(r.src, "src_lang")?;
        check(r.tgt, "tgt_lang")?;
        if r.tgt == "auto" {
            return Err("tgt_lang cannot be auto".into());
        }
        (
            scopes
                .iter()
                .map(|s| format!("{s}:{}:{}", r.src, r.tgt))
                .collect(),
            format!("{}→{}", r.src, r.tgt),
        )
    };
    Ok(Route {
        pools: entries.join(","),
        needs: r.pipeline.services().join(","),
        pair,
    })
}

#[cfg(test)]
mod tests;

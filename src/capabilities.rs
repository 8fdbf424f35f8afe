//! What a node can serve, and the pools that follows from it (PROTOCOL.md "Pool rule").
//!
//! This is a pure function of the node's latest registration/heartbeat, so it is tested
//! here without Redis; the `register`/`heartbeat` scripts apply the resulting pool list to
//! Redis as a difference against what the node was in before.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::node::{CapabilityByType, LangPair, LanguageCapabilities, NodeRegister};
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
    pub use_asr: bool,
    pub use_nmt: bool,
    pub use_tts: bool,
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
    let needs: Vec<&str> = [(r.use_asr, "asr"), (r.use_nmt, "nmt"), (r.use_tts, "tts")]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
        .collect();
    Ok(Route {
        pools: entries.join(","),
        needs: needs.join(","),
        pair,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(src: &'a str, tgt: &'a str) -> RouteRequest<'a> {
        RouteRequest {
            tenant: None,
            strict: false,
            two_way: false,
            src,
            tgt,
            lang_a: None,
            lang_b: None,
            use_asr: true,
            use_nmt: true,
            use_tts: true,
        }
    }

    #[test]
    fn job_routes_follow_the_pool_rule() {
        assert_eq!(route(&req("zh", "en")).unwrap().pools, "pub:zh:en");
        assert_eq!(route(&req("auto", "en")).unwrap().pools, "pub:auto:en");
        let mut r = req("auto", "en");
        r.two_way = true;
        r.lang_a = Some("zh");
        r.lang_b = Some("en");
        assert_eq!(route(&r).unwrap().pools, "pub:zh:en|pub:en:zh");
        r.tenant = Some("acme");
        assert_eq!(
            route(&r).unwrap().pools,
            "tenant:acme:zh:en|tenant:acme:en:zh,pub:zh:en|pub:en:zh"
        );
        r.strict = true;
        assert_eq!(
            route(&r).unwrap().pools,
            "tenant:acme:zh:en|tenant:acme:en:zh"
        );
        let mut r = req("zh", "en");
        r.use_tts = false;
        assert_eq!(route(&r).unwrap().needs, "asr,nmt");
        assert!(route(&req("zh", "a:b")).is_err());
        assert!(route(&req("zh", "auto")).is_err());
    }

    fn caps(asr: &[&str], sem: &[&str]) -> Capabilities {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Capabilities {
            langs: LanguageCapabilities {
                asr_languages: v(asr),
                semantic_languages: v(sem),
                tts_languages: v(sem),
            },
            accept_public: true,
            ..Default::default()
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn zh_en_node_serves_four_pairs_and_auto() {
        let p = caps(&["zh", "en"], &["zh", "en"]).pools();
        assert_eq!(
            p,
            set(&[
                "pub:zh:zh",
                "pub:zh:en",
                "pub:en:zh",
                "pub:en:en",
                "pub:auto:zh",
                "pub:auto:en"
            ])
        );
    }

    #[test]
    fn single_source_gives_no_auto_pool() {
        assert_eq!(
            caps(&["zh"], &["en", "ja"]).pools(),
            set(&["pub:zh:en", "pub:zh:ja"])
        );
    }

    #[test]
    fn empty_languages_mean_no_pools() {
        assert!(caps(&[], &[]).pools().is_empty());
        assert!(caps(&["zh"], &[]).pools().is_empty());
    }

    #[test]
    fn explicit_pairs_override_the_product_rule() {
        let mut c = caps(&["zh", "en"], &["zh", "en"]);
        c.pairs = Some(vec![LangPair {
            src: "zh".into(),
            tgt: "en".into(),
        }]);
        assert_eq!(c.pools(), set(&["pub:zh:en"]));
    }

    #[test]
    fn tenant_and_private_scopes() {
        let mut c = caps(&["zh"], &["en"]);
        c.tenant = Some("acme".into());
        assert_eq!(c.pools(), set(&["tenant:acme:zh:en"]));
        c.tenant = None;
        c.accept_public = false;
        assert!(c.pools().is_empty());
    }

    #[test]
    fn bad_codes_are_refused() {
        let c = caps(&["zh", "a:b"], &["en"]);
        assert_eq!(c.validate(), Err(CapabilityError::Lang("a:b".into())));
        let c = caps(&["auto"], &["en"]);
        assert!(c.validate().is_err());
        let mut c = caps(&["zh"], &["en"]);
        c.tenant = Some("x y".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn at_most_192_languages_together_and_4160_pools() {
        let codes: Vec<String> = (0..99).map(|i| format!("l{i:02}")).collect();
        let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
        // Whisper's 99 ASR languages with a few semantic ones, as every version accepted
        let c = caps(&refs, &refs[..3]);
        assert_eq!(c.validate(), Ok(()));
        let c = caps(&refs[..64], &refs[..64]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.pools().len(), 64 * 64 + 64);
        let mut c = caps(&refs[..97], &refs[..96]);
        c.langs.tts_languages.clear();
        assert_eq!(c.validate(), Err(CapabilityError::TooMany(193)));
        // 192 together, but a 96 × 96 matrix: too many pools
        let mut c = caps(&refs[..96], &refs[..96]);
        c.langs.tts_languages.clear();
        assert_eq!(c.validate(), Err(CapabilityError::TooMany(96 * 96 + 96)));
    }

    #[test]
    fn heartbeat_merge_keeps_omitted_fields() {
        let c = caps(&["zh", "en"], &["zh", "en"]);
        let m = c.merged(None, None).unwrap();
        assert_eq!(m, c);
        let m = c
            .merged(Some(&LanguageCapabilities::default()), None)
            .unwrap();
        assert!(m.pools().is_empty());
    }
}

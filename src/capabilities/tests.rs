//! Unit tests of `src/capabilities.rs`.

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
        pipeline: Pipeline::default(),
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
    r.pipeline.use_tts = false;
    assert_eq!(route(&r).unwrap().needs, "asr,nmt");
    // semantic and tone are needed only when asked for (PROTOCOL.md "Pool rule")
    r.pipeline.use_semantic = Some(true);
    r.pipeline.use_tone = Some(false);
    assert_eq!(route(&r).unwrap().needs, "asr,nmt,semantic");
    r.pipeline.use_tone = Some(true);
    assert_eq!(route(&r).unwrap().needs, "asr,nmt,semantic,tone");
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

/// Audit finding: a service type with `|` and spaces made up pool names in the node's
/// capability signature, which `offer()` then scanned on every heartbeat.
#[test]
fn service_types_that_could_forge_the_signature_are_refused() {
    let with = |kind: &str| {
        let mut c = caps(&["zh", "en"], &["zh", "en"]);
        c.services = vec![CapabilityByType {
            kind: kind.into(),
            ready: true,
        }];
        c
    };
    let base = caps(&["zh", "en"], &["zh", "en"]);
    for bad in ["x|y|p1 p2", "a,b", "a;b", "a b", &"s".repeat(65)] {
        let err = base.merged(None, Some(&with(bad).services)).unwrap_err();
        assert!(matches!(err, CapabilityError::Service(_)), "{bad}: {err}");
    }
    for ok in ["asr", "speaker_diarization", ""] {
        assert!(base.merged(None, Some(&with(ok).services)).is_ok(), "{ok}");
    }
    let many = vec![
        CapabilityByType {
            kind: "asr".into(),
            ready: true
        };
        65
    ];
    assert!(matches!(
        base.merged(None, Some(&many)),
        Err(CapabilityError::Service(_))
    ));
}

//! Session frames: the strict decoder never panics and accepts only JSON objects; decoded
//! init/utterance frames route (pool rule) and estimate their audio without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::capabilities::{RouteRequest, route};
use switchyard::protocol::decode;
use switchyard::protocol::session::{SessionInbound, estimate_ms};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = decode::<SessionInbound>(text) else {
        return;
    };
    // What strict decoding accepts is JSON (as serde_json reads it: ignored fields are
    // checked for syntax only, so a lone surrogate escape in one passes, as it always
    // did) and an object.
    serde_json::from_str::<serde::de::IgnoredAny>(text).expect("strict accepted non-JSON");
    assert!(
        text.trim_start().starts_with('{'),
        "strict accepted a non-object"
    );
    let _ = msg.session_id();
    let (src, tgt, opts, tenant) = match &msg {
        SessionInbound::SessionInit(i) => {
            (&i.src_lang, &i.tgt_lang, &i.options, i.tenant_id.as_deref())
        }
        SessionInbound::Utterance(u) => {
            let _ = estimate_ms(u.audio_format.as_deref().unwrap_or("opus"), u.audio.len());
            (&u.src_lang, &u.tgt_lang, &u.options, None)
        }
        SessionInbound::AudioChunk(c) => {
            let _ = estimate_ms("opus", c.payload.len());
            return;
        }
        _ => return,
    };
    for two_way in [false, true] {
        let _ = route(&RouteRequest {
            tenant,
            strict: two_way,
            two_way,
            src,
            tgt,
            lang_a: opts.lang_a.as_deref(),
            lang_b: opts.lang_b.as_deref(),
            use_asr: true,
            use_nmt: !two_way,
            use_tts: true,
        });
    }
});

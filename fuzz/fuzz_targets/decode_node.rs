//! Node frames: the strict decoder never panics, accepts only what plain serde_json also
//! reads as an object, and whatever it accepts goes through capability parsing (pools,
//! pairs, signature) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::capabilities::Capabilities;
use switchyard::protocol::decode;
use switchyard::protocol::node::NodeInbound;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = decode::<NodeInbound>(text) else {
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
    match msg {
        NodeInbound::NodeRegister(r) => {
            if let Ok(c) = Capabilities::from_register(&r) {
                let _ = (
                    c.pools(),
                    c.served_pairs(),
                    c.signature(),
                    c.ready_services(),
                );
            }
        }
        NodeInbound::NodeHeartbeat(h) => {
            let base = Capabilities::default();
            if let Ok(c) = base.merged(
                h.language_capabilities.as_ref(),
                h.capability_by_type.as_deref(),
            ) {
                let _ = (c.pools(), c.signature());
            }
        }
        _ => {}
    }
});

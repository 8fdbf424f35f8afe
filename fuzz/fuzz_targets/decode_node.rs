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
    let v: serde_json::Value = serde_json::from_str(text).expect("strict accepted invalid JSON");
    assert!(v.is_object(), "strict accepted a non-object");
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

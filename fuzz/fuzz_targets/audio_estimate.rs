//! The Rust side of the audio cut: the duration estimate that the cut rules of
//! lua/includes/cut.lua add up. Never panics, grows with the byte count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::session::estimate_ms;

fuzz_target!(|input: (String, usize)| {
    let (format, bytes) = input;
    let ms = estimate_ms(&format, bytes);
    assert!(
        estimate_ms(&format, bytes.saturating_add(1)) >= ms,
        "not monotonic"
    );
    if format.eq_ignore_ascii_case("pcm16") {
        assert_eq!(ms, bytes as u64 / 32);
    }
});

//! The Rust side of the audio cut: the duration estimates that the cut rules of
//! lua/includes/cut.lua add up. Never panic; by size, grow with the byte count; a streamed
//! chunk is 20 ms per packet of a whole length-prefixed packet stream, else by size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::session::{estimate_ms, stream_ms};

fuzz_target!(|input: (String, usize, Vec<u8>)| {
    let (format, bytes, payload) = input;
    let ms = estimate_ms(&format, bytes);
    assert!(
        estimate_ms(&format, bytes.saturating_add(1)) >= ms,
        "not monotonic"
    );
    if format.eq_ignore_ascii_case("pcm16") {
        assert_eq!(ms, bytes as u64 / 32);
    }
    let streamed = stream_ms(&payload);
    // at most one packet per 3 bytes (two of length, one of audio), or by size
    assert!(
        streamed <= (payload.len() as u64 / 3) * 20 || streamed == estimate_ms("opus", payload.len()),
        "{streamed} ms for {} bytes",
        payload.len()
    );
});

//! The base64 that frames carry audio in (`utterance.audio`, `audio_chunk.payload`,
//! `job_assign.audio`; PROTOCOL.md), decoded and encoded with SIMD (`base64-simd`).
//!
//! An utterance carries ~11 KB of it: the scalar engine's decode was 12 % of the instance's
//! instructions per job (callgrind, bench/notes.md round 7). Decoding is strict: only
//! canonical base64 (padded, zero trailing bits, no whitespace) is accepted, so text that
//! decodes is the encoding of its bytes and may be passed on in their place.

use base64_simd::STANDARD;

/// Text that is not canonical base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64;

/// The bytes `text` encodes.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, NotBase64> {
    STANDARD.decode_to_vec(text).map_err(|_| NotBase64)
}

/// `bytes` as base64, appended to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    STANDARD.encode_append(bytes, out);
}

/// `bytes` as base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode_to_string(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_canonical() {
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let text = encode(&bytes);
            assert_eq!(decode(text.as_bytes()), Ok(bytes.clone()));
            let mut out = String::from("x");
            encode_into(&bytes, &mut out);
            assert_eq!(out, format!("x{text}"));
        }
        assert_eq!(encode(b"abc"), "YWJj");
        // Non-canonical spellings of the same bytes, and what is not base64 at all.
        for odd in [
            "YWJ=", "YQ", "YR==", "YQ==\n", " YQ==", "Y===", "YQ=a", "YQ-=",
        ] {
            assert_eq!(decode(odd.as_bytes()), Err(NotBase64), "{odd:?} decoded");
        }
    }
}

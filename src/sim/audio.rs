//! Opus-sized fake audio for simulated sessions.
//!
//! The scheduler never decodes audio, but it sizes cuts from the byte count (Opus bytes / 60
//! × 20 ms) and stores and forwards the bytes, so the load must have the real shape: 20 ms
//! packets of about 60 bytes, each framed by its length as two little-endian bytes (the
//! lingua web client's framing, PROTOCOL.md `audio_chunk`).

use crate::protocol::base64;

/// Duration of one Opus packet.
pub const FRAME_MS: u64 = 20;

/// `ms` of audio as length-prefixed packets of 50–70 bytes (≈ 60 on average).
pub fn opus_packets(ms: u64) -> Vec<u8> {
    let frames = (ms / FRAME_MS).max(1);
    let mut out = Vec::with_capacity(frames as usize * 62);
    for f in 0..frames {
        let len: u16 = rand::random_range(50..=70);
        out.extend_from_slice(&len.to_le_bytes());
        // Bytes are not speech; a cheap varying pattern keeps them from compressing away.
        out.extend((0..len).map(|i| (f as u16).wrapping_mul(31).wrapping_add(i) as u8));
    }
    out
}

/// [`opus_packets`] as the base64 text the JSON frames carry.
pub fn opus_base64(ms: u64) -> String {
    base64::encode(&opus_packets(ms))
}

/// Pre-encoded audio, reused across sends so the load generator spends its CPU on the
/// protocol rather than on making bytes (it shares the machine with what it measures).
pub struct AudioBank {
    utterances: Vec<(u64, String)>,
    chunks: Vec<String>,
}

impl AudioBank {
    /// `variants` utterances with durations from `pick`, and chunk payloads of `chunk_ms`.
    pub fn new(variants: usize, mut pick: impl FnMut() -> u64, chunk_ms: u64) -> Self {
        Self {
            utterances: (0..variants.max(1))
                .map(|_| {
                    let ms = pick();
                    (ms, opus_base64(ms))
                })
                .collect(),
            chunks: (0..variants.max(1))
                .map(|_| opus_base64(chunk_ms))
                .collect(),
        }
    }

    /// A whole utterance: (its duration in ms, base64 audio).
    pub fn utterance(&self) -> (u64, &str) {
        let (ms, a) = &self.utterances[rand::random_range(0..self.utterances.len())];
        (*ms, a)
    }

    /// One `audio_chunk` payload.
    pub fn chunk(&self) -> &str {
        &self.chunks[rand::random_range(0..self.chunks.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_length_prefixed_and_about_sixty_bytes() {
        let bytes = opus_packets(1000);
        let (mut pos, mut frames) = (0, 0);
        while pos < bytes.len() {
            let len = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) as usize;
            assert!((50..=70).contains(&len));
            pos += 2 + len;
            frames += 1;
        }
        assert_eq!(pos, bytes.len());
        assert_eq!(frames, 50);
    }
}

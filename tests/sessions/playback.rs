//! Playback is not silence: a client's `tts_started` holds the pause cut of the audio it has
//! sent (past `session.playback_grace_ms`), and its `tts_play_ended` starts the pause clock
//! again (PROTOCOL.md "audio_chunk"; `lua/session_touch.lua`).

use std::time::Instant;

use super::*;

/// Audit finding: nothing tested that `tts_started` / `tts_play_ended` move the pause cut.
#[tokio::test]
async fn playback_holds_the_pause_cut_until_it_ends() {
    let redis = RedisServer::start().await;
    // (wide margins: a loaded machine may take a few hundred ms between two frames)
    let inst = start_tweaked(&redis, |c| {
        c.session.pause_ms = 1_000;
        // long: were tts_play_ended to change nothing, the cut would come only 11 s after
        // tts_started, past what the test waits for it
        c.session.playback_grace_ms = 10_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, _nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let mut started = fixture("tts_play_ended");
    started["type"] = json!("tts_started");
    started["session_id"] = json!(sid);
    s.send(&started).await;
    // Without playback the pause cut comes within pause_ms + one sweep (~1.2 s); with it,
    // not before pause_ms + playback_grace_ms (11 s).
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(2_000))
            .await
            .is_none(),
        "the audio was cut while the client played a result"
    );
    let ended = for_session("tts_play_ended", &sid);
    let at = Instant::now();
    s.send(&ended).await;
    // (within T = 5 s: only tts_play_ended's restart of the pause clock brings it so soon)
    let a = next_of(&mut n, "job_assign", T)
        .await
        .expect("cut by the pause once playback ended");
    assert!(
        at.elapsed() >= Duration::from_millis(1_000),
        "cut {:?} after playback ended, before pause_ms (1 s)",
        at.elapsed()
    );
    assert_eq!(a["utterance_index"], 0, "{a}");
    invariants::check(&mut c).await;
}

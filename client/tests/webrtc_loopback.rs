//! Two WebRTC peers in one process over 127.0.0.1: one offers (controlling, full ICE), the other
//! answers. Each plays a tone and records; the far end must hear the right frequency. DTMF
//! (RFC 4733) goes both ways. Every wait is on a condition with a deadline.

use std::time::Duration;

use trunkline_client::g711::Law;
use trunkline_client::wav::{RATE, dominant_frequency, read_wav};
use trunkline_client::webrtc::{AudioSource, MediaEvent, PeerOptions, WebRtcPeer};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tones_both_ways_and_dtmf_over_loopback() {
    let mut a = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
    let b = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
    let offer = a.create_offer().unwrap();
    let (answer, b) = b.accept_offer(&offer, AudioSource::tone(440.0)).unwrap();
    assert!(answer.contains("a=setup:active") || answer.contains("a=setup:passive"), "{answer}");
    let a = a.accept_answer(&answer, AudioSource::tone(1000.0)).unwrap();

    let sa = a.wait_connected(WAIT).await.unwrap();
    let sb = b.wait_connected(WAIT).await.unwrap();
    assert_eq!(sa.send_codec, Some(Law::Mu));
    assert_eq!(sb.send_codec, Some(Law::Mu));

    // One and a half seconds of audio each way (75 frames of 20 ms).
    let sb = b.wait_packets(75, WAIT).await.unwrap();
    let sa = a.wait_packets(75, WAIT).await.unwrap();
    assert!(sa.first_audio_after.is_some() && sb.first_audio_after.is_some());
    assert_eq!(sb.bytes_received, sb.packets_received * 160);

    let at_b = b.recording();
    let at_a = a.recording();
    assert!(at_b.len() >= 75 * 160, "{}", at_b.len());
    let fb = dominant_frequency(&at_b, RATE);
    let fa = dominant_frequency(&at_a, RATE);
    assert!((fb - 1000.0).abs() <= 20.0, "B heard {fb} Hz, expected 1000");
    assert!((fa - 440.0).abs() <= 20.0, "A heard {fa} Hz, expected 440");

    // DTMF: A → B one digit, then B → A a sequence.
    a.send_dtmf('5').unwrap();
    assert_eq!(b.wait_dtmf(1, WAIT).await.unwrap(), "5");
    b.send_dtmf_digits("12#*").unwrap();
    assert_eq!(a.wait_dtmf(4, WAIT).await.unwrap(), "12#*");
    assert!(a.send_dtmf('x').is_err());
    assert_eq!(a.stats().dtmf_sent, "5");

    // The event history has the connection, the first audio and the digits, in order.
    let seen = a.events();
    let at = |e: &MediaEvent| seen.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e:?} in {seen:?}"));
    assert!(at(&MediaEvent::Connected) < at(&MediaEvent::FirstAudio), "{seen:?}");
    assert!(at(&MediaEvent::FirstAudio) < at(&MediaEvent::Dtmf('1')), "{seen:?}");
    assert!(seen.contains(&MediaEvent::Connected), "{seen:?}");
    assert!(seen.contains(&MediaEvent::FirstAudio), "{seen:?}");
    assert!(seen.contains(&MediaEvent::Dtmf('#')), "{seen:?}");

    // Recording to a WAV keeps the tone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.wav");
    let n = b.save_recording(&path).unwrap();
    assert!(n >= 75 * 160);
    let f = dominant_frequency(&read_wav(&path).unwrap(), RATE);
    assert!((f - 1000.0).abs() <= 20.0, "{f}");

    // Closing A ends B's session too (DTLS close_notify), without waiting for timeouts.
    let final_a = a.close().await;
    assert!(final_a.closed);
    let closed = b.wait_for("B closed", WAIT, |s| s.closed).await.unwrap();
    assert_eq!(closed.close_reason.as_deref(), Some("closed by the peer"));
    let _ = b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcma_only_peer_gets_pcma() {
    // The answerer prefers A-law; the offerer still prefers μ-law: each sends its preference,
    // since both laws were negotiated, and each decodes what arrives by payload type.
    let mut a = WebRtcPeer::bind(PeerOptions::default()).await.unwrap();
    let b = WebRtcPeer::bind(PeerOptions { prefer: Law::A, ..PeerOptions::default() }).await.unwrap();
    let offer = a.create_offer().unwrap();
    let (answer, b) = b.accept_offer(&offer, AudioSource::tone(700.0)).unwrap();
    let a = a.accept_answer(&answer, AudioSource::tone(1200.0)).unwrap();
    let sb = b.wait_connected(WAIT).await.unwrap();
    assert_eq!(sb.send_codec, Some(Law::A));
    a.wait_packets(50, WAIT).await.unwrap();
    b.wait_packets(50, WAIT).await.unwrap();
    let fa = dominant_frequency(&a.recording(), RATE);
    let fb = dominant_frequency(&b.recording(), RATE);
    assert!((fa - 700.0).abs() <= 20.0, "{fa}");
    assert!((fb - 1200.0).abs() <= 20.0, "{fb}");
    a.close().await;
    b.close().await;
}

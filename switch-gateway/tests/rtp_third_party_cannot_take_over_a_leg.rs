//! A third party on another loopback address (127.0.0.9) streams RTP carrying a 3 kHz tone at a
//! call's media ports on the gateway, as someone who sniffed or guessed them would:
//!
//! * F7 relay: a scripted desk phone 1001 (1 kHz, so the test decides exactly when it sends)
//!   calls baresip 1002 (440 Hz) through the relay; the attacker streams at both relay ports
//!   for the whole call, including 3 s during which 1001 sends nothing at all (the relay used to
//!   hand a leg to any source after 1 s of silence).
//! * Bridge: the headless browser 2001 (1 kHz) calls baresip 1001 (440 Hz) over WebRTC; the
//!   attacker streams at the bridge's phone-facing RTP port (which used to accept any source).
//!
//! Checked by frequency: no phone and no browser ever hears 3 kHz, everyone still hears the
//! right far end; the attacker receives nothing; the gateway counts the dropped packets in
//! `trunkline_rtp_dropped_total{reason="foreign_source"}`.

#[path = "common/baresip.rs"]
mod baresip;
mod common;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use baresip::Phone;
use common::direct::Browser;
use common::*;
use sipcheck::wait_phone_list;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use trunkline_client::wav::{dominant_frequency, tone};
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RtpStream, parse_rtp};
use trunkline_protocol::{CallEvent, DirectClientMsg, DirectServerMsg};
use trunkline_test_support::audio;

const ATTACKER_IP: &str = "127.0.0.9";
const ATTACK_HZ: f64 = 3000.0;
/// Longer than any test here: baresip hangs up when its WAV file ends.
const PHONE_WAV_SECS: u32 = 60;

/// Share of the energy of `x` at `freq` (≈1 for a pure tone at `freq`, ≈0 without it).
fn share_at(x: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - c * s1 * s2;
    let energy: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
    if energy > 0.0 { 2.0 * power / (x.len() as f64 * energy) } else { 0.0 }
}

fn pcm_to_i16(pcm: &audio::Pcm) -> Vec<i16> {
    pcm.samples.iter().map(|s| (s * 32767.0) as i16).collect()
}

/// No 3 kHz in any half second of `x` that carries sound (the attacker's audio would show there
/// even if it only got through for a moment).
fn assert_no_attack_tone(x: &[i16], who: &str) {
    let mut windows = 0;
    for w in x.chunks(4000) {
        let rms = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        if rms < 300.0 {
            continue; // silence
        }
        windows += 1;
        let share = share_at(w, 8000, ATTACK_HZ);
        assert!(share < 0.05, "{who} heard the attacker's {ATTACK_HZ} Hz ({:.0}% of a half second)", share * 100.0);
    }
    assert!(windows > 0, "{who} heard nothing at all");
}

/// PCMU packets of the attacker's tone, sent every 20 ms to every target until `stop`.
struct Attacker {
    sock: Arc<UdpSocket>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Attacker {
    async fn start(targets: Vec<SocketAddr>) -> Attacker {
        let sock = Arc::new(UdpSocket::bind((ATTACKER_IP, 0)).await.expect("127.0.0.9 is a loopback address"));
        let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let task = {
            let (sock, sent, stop) = (sock.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                let samples = tone(ATTACK_HZ as f32, 1.0, 8000);
                // Well-formed PCMU of its own SSRC: only its source tells it apart.
                let mut stream = RtpStream::new(0x0bad_beef, 0);
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let frame = &samples[(i % 50) * 160..(i % 50 + 1) * 160];
                    let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
                    for t in &targets {
                        if sock.send_to(&pkt, t).await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            })
        };
        Attacker { sock, sent, stop, task }
    }

    /// Stop sending; returns (packets sent, datagrams the attacker received meanwhile).
    async fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while self.sock.try_recv_from(&mut buf).is_ok() {
            got += 1;
        }
        (self.sent.load(Ordering::Relaxed), got)
    }
}

/// `trunkline_rtp_dropped_total{reason="foreign_source"}` from a `/metrics` endpoint.
async fn foreign_drops_at(addr: SocketAddr) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text)).await.ok()?.ok()?;
    let line = text.lines().find(|l| l.starts_with("trunkline_rtp_dropped_total") && l.contains("reason=\"foreign_source\""));
    Some(line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64)
}

/// The counter as the process's recorder has it. In a test process the cloud and the gateway
/// both serve `/metrics`, and whichever started first installed the one process-wide recorder:
/// read both and take the larger.
async fn foreign_drops(endpoints: &[SocketAddr]) -> u64 {
    let mut best = 0;
    for e in endpoints {
        best = best.max(foreign_drops_at(*e).await.unwrap_or(0));
    }
    best
}

/// The counter's growth since `before`, once it covers the `sent` packets (the last ones may
/// still be on their way through the gateway's sockets) or after a few seconds.
async fn dropped_since(endpoints: &[SocketAddr], before: u64, sent: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let grew = foreign_drops(endpoints).await.saturating_sub(before);
        if grew >= sent || Instant::now() >= deadline {
            return grew;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metrics_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], baresip::free_tcp_port()))
}

/// The gateway's address that sends RTP to `phone` (its relay or bridge port facing the phone).
async fn gateway_port_facing(phone: &Phone) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(a) = phone.rtp_source() {
            return a;
        }
        assert!(Instant::now() < deadline, "{}: no RTP from the gateway\n{}", phone.number, phone.dump());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ack_for(ok: &trunkline_sip::Response, gw: SocketAddr, local: SocketAddr) -> String {
    format!(
        "ACK sip:1002@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKack2;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:1001@{gw}>;tag=f2caller\r\nTo: {}\r\nCall-ID: f2-call@test\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
        ok.headers.get("To").unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_rtp_at_the_f7_relay_is_never_heard_even_while_a_leg_is_silent() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let metrics = metrics_port();
    let gw = Gateway::start_with("hq", &cloud.ws_url, dir.path(), |c| {
        c.digest_algorithms = vec!["MD5".into()]; // baresip 1.0 answers MD5 challenges only
        c.metrics_listen = Some(metrics);
    })
    .await;
    wait_phone_list(&gw.config.state_dir, &["1001", "1002"]).await;
    let endpoints = [metrics, cloud.addr];

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, PHONE_WAV_SECS);
    let mut callee = Phone::start(dir.path(), "1002", gw.sip, &tone440, true).await;
    callee.registered().await;

    // 1001 is scripted: it calls, then sends 1 kHz, then nothing for 3 s, then 1 kHz again.
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let ok = scripted_phone::call(&sip, gw.sip, "1002", rtp.local_addr().unwrap()).await;
    sip.send_to(ack_for(&ok, gw.sip, sip.local_addr().unwrap()).as_bytes(), gw.sip).await.unwrap();
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    let relay_a = trunkline_media::sdp::Sdp::parse(&answer).unwrap().audio_rtp_addr().unwrap();
    let relay_a = SocketAddr::new(gw.sip.ip(), relay_a.port());
    callee.expect_event("CALL_ESTABLISHED", WAIT).await;

    let (talk, silent) = (Duration::from_secs(3), Duration::from_secs(3));
    let sender = {
        let rtp = rtp.clone();
        tokio::spawn(async move {
            let samples = tone(1000.0, 1.0, 8000);
            let mut stream = RtpStream::new(0x1001, 0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let start = Instant::now();
            let mut i = 0usize;
            while start.elapsed() < talk * 2 + silent {
                tick.tick().await;
                let t = start.elapsed();
                if t >= talk && t < talk + silent {
                    continue; // this leg is silent: not a single packet
                }
                let frame = &samples[(i % 50) * 160..(i % 50 + 1) * 160];
                let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
                let _ = rtp.send_to(&pkt, relay_a).await;
                i += 1;
            }
        })
    };
    // What 1001 hears, the whole time (also while it is silent itself).
    let heard = Arc::new(std::sync::Mutex::new(Vec::<i16>::new()));
    let recorder = {
        let (rtp, heard) = (rtp.clone(), heard.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                if let Ok(h) = parse_rtp(&buf[..n])
                    && h.payload_type == Law::Mu.payload_type()
                {
                    Law::Mu.decode_into(h.payload(&buf[..n]), &mut heard.lock().unwrap());
                }
            }
        })
    };

    // Both legs latched: 1002 got 1001's audio, 1001 got 1002's. Then the attack starts, at
    // both relay ports.
    let relay_b = gateway_port_facing(&callee).await;
    eventually("1001 hears 1002", || {
        let n = heard.lock().unwrap().len();
        async move { n >= 8000 }
    })
    .await;
    let before = foreign_drops(&endpoints).await;
    let attacker = Attacker::start(vec![relay_a, relay_b]).await;
    sender.await.unwrap();
    let (sent, attacker_got) = attacker.finish().await;
    let dropped = dropped_since(&endpoints, before, sent).await;

    callee.hangup().await;
    callee.expect_event("CALL_CLOSED", WAIT).await;
    callee.quit().await;
    recorder.abort();

    // 1002 heard 1001's 1 kHz and never the attacker; 1001 heard 1002's 440 Hz and never the
    // attacker, also while it was silent; the attacker got no audio back.
    let pcm = audio::read_wav(&callee.received_audio()).unwrap_or_else(|e| panic!("{e}\n{}", callee.dump()));
    baresip::check_tone(&callee, "heard from 1001", &pcm, 1000.0, 4.0);
    assert_no_attack_tone(&pcm_to_i16(&pcm), "1002");
    let heard = heard.lock().unwrap().clone();
    let f = dominant_frequency(&heard, 8000);
    assert!((f - 440.0).abs() < 20.0, "1001 heard {f} Hz, expected 1002's 440 Hz");
    assert_no_attack_tone(&heard, "1001");
    assert_eq!(attacker_got, 0, "the attacker received audio from the relay");
    assert!(sent > 0 && dropped > 0, "the relay counted no foreign packets ({sent} sent, {dropped} dropped)");
    let accepted = sent.saturating_sub(dropped);
    eprintln!(
        "FIGURE rtp_relay_foreign_packets_accepted {accepted} packets | third-party RTP ({sent} packets, 3 kHz) at both F7 relay ports, incl. 3 s while one leg sent nothing"
    );
    eprintln!(
        "FIGURE rtp_relay_foreign_packets_to_attacker {attacker_got} packets | media the relay sent to the third party meanwhile"
    );
    assert_eq!(accepted, 0, "{sent} foreign packets sent, only {dropped} dropped");

    gw.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_rtp_at_a_bridge_s_phone_port_is_never_heard_by_the_browser() {
    baresip::require();
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let metrics = metrics_port();
    let gw = Gateway::start_with("hq", &cloud.ws_url, dir.path(), |c| c.metrics_listen = Some(metrics)).await;
    wait_phone_list(&gw.config.state_dir, &["1001"]).await;
    let endpoints = [metrics, cloud.addr];

    let tone440 = baresip::tone_wav(dir.path(), "tone440.wav", 440, PHONE_WAV_SECS);
    let mut phone = Phone::start(dir.path(), "1001", gw.sip, &tone440, true).await;
    phone.registered().await;

    let mut browser = Browser::login(&cloud.ws_url, "2001").await;
    let (_url, key) = browser.dial_connect("rtp-attack", "1001").await;
    let mut leg = browser.connect("rtp-attack", PeerOptions::bind("127.0.0.1".parse().unwrap()), AudioSource::tone(1000.0)).await;
    leg.wait_open(WAIT).await.expect("the leg to hq is up");
    assert_eq!(leg.present(&key, "2001").await, DirectServerMsg::Accepted { call_id: "rtp-attack".into() });
    let media = leg.media.clone();
    loop {
        match leg.recv().await {
            Some(DirectServerMsg::Progress { event: CallEvent::Connected }) => break,
            Some(DirectServerMsg::Progress { .. }) => continue,
            other => panic!("{other:?}\n{}", phone.dump()),
        }
    }
    phone.expect_event("CALL_ESTABLISHED", WAIT).await;
    media.wait_connected(WAIT).await.expect("ICE + DTLS up with the gateway");
    media.wait_packets(100, WAIT).await.expect("audio from the phone");

    // The bridge's port facing the phone, as the phone sees it; the attack starts there.
    let bridge_port = gateway_port_facing(&phone).await;
    let before = foreign_drops(&endpoints).await;
    let rec_before = media.recording().len();
    let attacker = Attacker::start(vec![bridge_port]).await;
    // 4 s of attack: 200 packets of 20 ms reach the browser meanwhile (from the phone).
    let packets_before = media.stats().packets_received;
    media
        .wait_for("4 s of audio during the attack", Duration::from_secs(15), |s| s.packets_received >= packets_before + 200)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", phone.dump()));
    let (sent, attacker_got) = attacker.finish().await;
    let dropped = dropped_since(&endpoints, before, sent).await;

    let rec = media.recording();
    let during = &rec[rec_before..];
    let f = dominant_frequency(during, 8000);
    assert!(
        (f - 440.0).abs() < 20.0,
        "the browser heard {f} Hz during the attack, expected the phone's 440 Hz\n{}",
        phone.dump()
    );
    assert_no_attack_tone(during, "the browser");
    let heard = phone.wait_received(3.0, WAIT).await;
    baresip::check_tone(&phone, "heard from the browser", &baresip::since(&heard, 1.0), 1000.0, 1.5);
    assert_eq!(attacker_got, 0, "the attacker received the browser's audio from the bridge");
    assert!(sent > 0 && dropped > 0, "the bridge counted no foreign packets ({sent} sent, {dropped} dropped)");
    let accepted = sent.saturating_sub(dropped);
    eprintln!(
        "FIGURE rtp_bridge_foreign_packets_accepted {accepted} packets | third-party RTP ({sent} packets, 3 kHz) at a WebRTC bridge's phone-facing port during a call"
    );
    eprintln!(
        "FIGURE rtp_bridge_foreign_packets_to_attacker {attacker_got} packets | media the bridge sent to the third party meanwhile"
    );
    assert_eq!(accepted, 0, "{sent} foreign packets sent, only {dropped} dropped");

    leg.send(&DirectClientMsg::Hangup);
    phone.expect_event("CALL_CLOSED", WAIT).await;
    media.close().await;
    phone.quit().await;
    gw.stop().await;
    cloud.stop().await;
}

//! The echo-test endpoint (`echo_number`): answers at once, plays a short prompt tone, then
//! sends every audio packet it receives back to where it came from (symmetric RTP), so a
//! newcomer hears a call work without owning a desk phone. Where it came from is latched by
//! the relay's and the bridge's policy (`trunkline_media::latch`): a third party that sends to
//! the port is neither echoed nor able to take the call's audio over.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trunkline_media::g711::Law;
use trunkline_media::latch::{DropReason, Kind, Latch, drop_counter};
use trunkline_media::ports::LegSockets;
use trunkline_media::rtp::{RtpStream, parse_rtp};

/// Prompt: 0.4 s of 800 Hz, then the echo.
const PROMPT_HZ: f32 = 800.0;
const PROMPT_PACKETS: u32 = 20;

pub async fn run(sock: LegSockets, remote: Option<SocketAddr>, pt: u8) {
    let law = Law::from_payload_type(pt).unwrap_or(Law::A);
    let mut out = RtpStream::new(rand::random(), rand::random());
    let mut ts: u32 = rand::random();
    if let Some(to) = remote {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..PROMPT_PACKETS {
            tick.tick().await;
            let samples: Vec<i16> = (0..160)
                .map(|n| {
                    let t = (i * 160 + n) as f32 / 8000.0;
                    ((t * PROMPT_HZ * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let pkt = out.packet(pt, ts, &law.encode_frame(&samples));
            ts = ts.wrapping_add(160);
            let _ = sock.rtp_socket().send_to(&pkt, to).await;
        }
    }
    let mut latch = Latch::new();
    latch.set_signalled(remote);
    let foreign = drop_counter(DropReason::ForeignSource);
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sock.rtp_socket().recv_from(&mut buf).await else { return };
        let Ok(header) = parse_rtp(&buf[..n]) else { continue };
        if !latch.on_packet(Kind::Rtp, from, Instant::now()).accepted() {
            foreign.increment(1);
            continue;
        }
        let Some(to) = latch.destination(Kind::Rtp) else { continue };
        let payload = header.payload(&buf[..n]);
        // DTMF events and the like are not echoed, nor are empty packets.
        if header.payload_type != pt || payload.is_empty() {
            continue;
        }
        // Symmetric RTP: answer where the audio really comes from (the latched source).
        let pkt = out.packet(pt, ts, payload);
        ts = ts.wrapping_add(payload.len() as u32);
        let _ = sock.rtp_socket().send_to(&pkt, to).await;
    }
}

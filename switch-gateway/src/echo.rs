//! The echo-test endpoint (`echo_number`): answers at once, plays a short prompt tone, then
//! sends every audio packet it receives back to where it came from (symmetric RTP), so a
//! newcomer hears a call work without owning a desk phone.

use std::net::SocketAddr;
use std::time::Duration;

use trunkline_client::g711::Law;
use trunkline_media::ports::LegSockets;

/// Prompt: 0.4 s of 800 Hz, then the echo.
const PROMPT_HZ: f32 = 800.0;
const PROMPT_PACKETS: u32 = 20;

pub async fn run(sock: LegSockets, remote: Option<SocketAddr>, pt: u8) {
    let law = if pt == 0 { Law::Mu } else { Law::A };
    let ssrc: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let header = |seq: &mut u16, ts: &mut u32, samples: u32, marker: bool| {
        let mut h = Vec::with_capacity(12 + 160);
        h.push(0x80);
        h.push(if marker { 0x80 | pt } else { pt });
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&ts.to_be_bytes());
        h.extend_from_slice(&ssrc.to_be_bytes());
        *seq = seq.wrapping_add(1);
        *ts = ts.wrapping_add(samples);
        h
    };
    let mut latched = remote;
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
            let mut pkt = header(&mut seq, &mut ts, 160, i == 0);
            pkt.extend(law.encode_frame(&samples));
            let _ = sock.rtp_socket().send_to(&pkt, to).await;
        }
    }
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sock.rtp_socket().recv_from(&mut buf).await else { return };
        if n <= 12 || buf[0] >> 6 != 2 {
            continue;
        }
        // Symmetric RTP: answer where the audio really comes from.
        if latched != Some(from) {
            latched = Some(from);
        }
        let in_pt = buf[1] & 0x7f;
        if in_pt != pt {
            continue; // DTMF events and the like are not echoed
        }
        let cc = usize::from(buf[0] & 0x0f);
        let off = 12 + 4 * cc;
        if off >= n || buf[0] & 0x10 != 0 {
            continue;
        }
        let payload = &buf[off..n];
        let mut pkt = header(&mut seq, &mut ts, payload.len() as u32, false);
        pkt.extend_from_slice(payload);
        let _ = sock.rtp_socket().send_to(&pkt, from).await;
    }
}

// Shared by the `stun` fuzz target and media/tests/fuzz_regressions.rs (via `include!`).
// Datagrams and stream bytes from STUN/TURN servers (or anyone spoofing them) into our sans-IO
// STUN probe and TURN allocations. Never panics; returns whether the probe took a datagram as its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trunkline_media::srflx::{ProbeTiming, SrflxProbe};
use trunkline_media::turn::{RelayTransmit, Relays, TurnServer, TurnTransport};

/// Copies the magic cookie and transaction id of `request` into `data` (when it is long enough),
/// so the fuzzer reaches the code behind the transaction match whatever random id we drew.
fn as_answer_to(request: &[u8], data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.len() >= 20 && request.len() >= 20 {
        d[4..20].copy_from_slice(&request[4..20]);
    }
    d
}

/// `[len][bytes]...` records: several datagrams / stream reads from one input.
fn records(data: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![];
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        out.push(&tail[..n]);
        rest = &tail[n..];
        if out.len() >= 16 {
            break;
        }
    }
    out
}

pub fn stun(data: &[u8]) -> bool {
    let now = Instant::now();
    let local: SocketAddr = "10.77.1.2:40000".parse().unwrap();
    let stun_server: SocketAddr = "198.51.100.7:3478".parse().unwrap();

    // Server-reflexive probe: the whole input as one answer, raw and matched to our request.
    let mut probe = SrflxProbe::new(&[stun_server], ProbeTiming::default(), now);
    let mut request = vec![];
    while let Some((_, req)) = probe.poll_transmit(now) {
        request = req;
    }
    let mut ours = false;
    for d in [data.to_vec(), as_answer_to(&request, data)] {
        if probe.is_ours(stun_server, &d) {
            ours = true;
        }
        probe.handle_input(stun_server, &d, now);
        while probe.poll_event().is_some() {}
    }

    // TURN over UDP and over TCP: each record is one datagram / one read from the stream.
    let udp_server: SocketAddr = "203.0.113.10:3478".parse().unwrap();
    let tcp_server: SocketAddr = "203.0.113.11:3478".parse().unwrap();
    let servers = [
        TurnServer::new(TurnTransport::Udp, udp_server, "turn.test", "1:hq", "pw"),
        TurnServer::new(TurnTransport::Tcp, tcp_server, "turn.test", "1:hq", "pw"),
    ];
    let mut relays = Relays::new(&servers, local, now);
    relays.permit("203.0.113.101".parse().unwrap(), now);
    let stream = relays.poll_connect().map(|(id, _)| id);
    if let Some(id) = stream {
        relays.stream_connected(id, "10.77.1.2:50000".parse().unwrap(), now);
    }
    let (mut udp_req, mut tcp_req) = (vec![], vec![]);
    let mut t = now;
    for (i, rec) in records(data).into_iter().enumerate() {
        while let Some(tx) = relays.poll_transmit() {
            match tx {
                RelayTransmit::Udp { data, .. } => udp_req = data,
                RelayTransmit::Stream { data, .. } => tcp_req = data,
            }
        }
        let patched = i % 2 == 0;
        if relays.is_from_server(udp_server) {
            let d = if patched { as_answer_to(&udp_req, rec) } else { rec.to_vec() };
            relays.udp_data(udp_server, &d, t);
        }
        if let Some(id) = stream {
            let d = if patched { as_answer_to(&tcp_req, rec) } else { rec.to_vec() };
            relays.stream_data(id, &d, t);
        }
        while relays.poll_event().is_some() {}
        while relays.poll_peer_data().is_some() {}
        let _ = relays.send("203.0.113.10:49160".parse().unwrap(), "203.0.113.101:40000".parse().unwrap(), b"x", t);
        t += Duration::from_millis(100);
        if let Some(wake) = relays.poll_timeout()
            && wake <= t
        {
            relays.handle_timeout(t);
        }
    }
    relays.delete(t);
    while relays.poll_transmit().is_some() {}
    ours
}

//! The relay over real UDP sockets on loopback: fake phones on both legs.
//! Every address used here is on loopback; no test sends anywhere else.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use trunkline_media::{Leg, LegSockets, PortAllocator, Relay, RelayConfig, RelayHandle};

struct Call {
    a: Phone,
    b: Phone,
    /// The relay's sockets facing each phone: (RTP, RTCP).
    relay_a: (SocketAddr, SocketAddr),
    relay_b: (SocketAddr, SocketAddr),
    handle: RelayHandle,
}

/// A relay between phones `a` and `b`; `a_sdp`/`b_sdp` are what their SDPs advertise.
async fn call_with(config: RelayConfig, a: Phone, b: Phone, a_sdp: Option<SocketAddr>, b_sdp: Option<SocketAddr>) -> Call {
    let leg_a = LegSockets::bind_ephemeral(LOCALHOST).await.unwrap();
    let leg_b = LegSockets::bind_ephemeral(LOCALHOST).await.unwrap();
    let relay_a = (leg_a.rtp_local_addr(), leg_a.rtcp_local_addr());
    let relay_b = (leg_b.rtp_local_addr(), leg_b.rtcp_local_addr());
    let handle = Relay::start_with(config, leg_a, leg_b, a_sdp, b_sdp);
    Call { a, b, relay_a, relay_b, handle }
}

async fn call(a_sdp_wrong: bool) -> Call {
    let (a, b) = (Phone::new().await, Phone::new().await);
    let a_sdp = if a_sdp_wrong { Some("127.0.0.1:9".parse().unwrap()) } else { Some(a.rtp_addr()) };
    let b_sdp = Some(b.rtp_addr());
    call_with(RelayConfig::default(), a, b, a_sdp, b_sdp).await
}

/// `from` sends `pkt` to the relay at `to`; `expect_at` must receive it byte for byte, from
/// `relay_src`.
async fn hop(from: &UdpSocket, to: SocketAddr, pkt: &[u8], expect_at: &UdpSocket, relay_src: SocketAddr) {
    from.send_to(pkt, to).await.unwrap();
    let (got, src) = recv(expect_at).await;
    assert_eq!(got, pkt, "payload changed in transit");
    assert_eq!(src, relay_src, "relay must send from the other leg's socket");
}

#[tokio::test]
async fn rtp_and_rtcp_both_ways_byte_identical() {
    let c = call(false).await;
    // Phone B's RTCP socket is not at RTP port + 1: tell the relay (a=rtcp).
    c.handle.set_rtcp_remote(Leg::B, c.b.rtcp_addr());

    let a_pkts: Vec<Vec<u8>> = (0..50).map(|i| pcmu(i, 0xA0A0_A0A0)).collect();
    let b_pkts: Vec<Vec<u8>> = (0..50).map(|i| pcmu(1000 + i, 0xB0B0_B0B0)).collect();
    for p in &a_pkts {
        c.a.rtp.send_to(p, c.relay_a.0).await.unwrap();
    }
    for p in &a_pkts {
        let (got, src) = recv(&c.b.rtp).await;
        assert_eq!(&got, p);
        assert_eq!(src, c.relay_b.0);
    }
    for p in &b_pkts {
        c.b.rtp.send_to(p, c.relay_b.0).await.unwrap();
    }
    for p in &b_pkts {
        let (got, src) = recv(&c.a.rtp).await;
        assert_eq!(&got, p);
        assert_eq!(src, c.relay_a.0);
    }
    // RTCP A → B goes to B's a=rtcp address, from the relay's B-side RTCP socket.
    hop(&c.a.rtcp, c.relay_a.1, &rtcp_rr(0xA0A0_A0A0), &c.b.rtcp, c.relay_b.1).await;
    // RTCP B → A: A's RTCP socket latches; before that the guess was A's RTP port + 1, so let
    // A's RTCP speak first, then B's report reaches it.
    c.a.rtcp.send_to(&rtcp_rr(0xA0A0_A0A0), c.relay_a.1).await.unwrap();
    recv(&c.b.rtcp).await;
    hop(&c.b.rtcp, c.relay_b.1, &rtcp_rr(0xB0B0_B0B0), &c.a.rtcp, c.relay_a.1).await;

    let bytes = 100 * 172 + 3 * 8;
    wait_until("counters", || {
        let s = c.handle.stats();
        s.a_to_b_packets == 52 && s.b_to_a_packets == 51 && s.bytes == bytes
    })
    .await;
    let s = c.handle.stats();
    assert_eq!(s.dropped, 0, "{s:?}");
    assert_eq!(s.latched_a, Some(c.a.rtp_addr()));
    assert_eq!(s.latched_b, Some(c.b.rtp_addr()));
    assert_eq!(s.latched_a_rtcp, Some(c.a.rtcp_addr()));
    assert_eq!(s.latched_b_rtcp, Some(c.b.rtcp_addr()));
    assert!(s.last_from_a.is_some() && s.last_from_b.is_some() && s.running);
    assert_eq!(s.last_packet_at, s.last_from_a.max(s.last_from_b));
}

#[tokio::test]
async fn latches_to_the_real_source_when_sdp_is_wrong() {
    // Phone A's SDP names 127.0.0.1:9 (nobody there), like a phone that writes its eth0
    // address into SDP while sending from elsewhere.
    let c = call(true).await;
    // B talks first: the relay can only try the advertised address; A hears nothing.
    c.b.rtp.send_to(&pcmu(1, 2), c.relay_b.0).await.unwrap();
    wait_until("B's packet handled", || c.handle.stats().b_to_a_packets == 1).await;
    assert_nothing_queued(&c.a.rtp);
    // A's first packet latches leg A onto its real socket…
    hop(&c.a.rtp, c.relay_a.0, &pcmu(1, 1), &c.b.rtp, c.relay_b.0).await;
    // …so B's audio now reaches A.
    hop(&c.b.rtp, c.relay_b.0, &pcmu(2, 2), &c.a.rtp, c.relay_a.0).await;
    assert_eq!(c.handle.stats().latched_a, Some(c.a.rtp_addr()));
}

#[tokio::test]
async fn unknown_remote_drops_until_latched_or_signalled() {
    let (a, b) = (Phone::new().await, Phone::new().await);
    let b_addr = b.rtp_addr();
    let c = call_with(RelayConfig::default(), a, b, None, None).await;
    c.a.rtp.send_to(&pcmu(1, 1), c.relay_a.0).await.unwrap();
    wait_until("drop counted", || c.handle.stats().dropped_no_remote == 1).await;
    assert_eq!(c.handle.stats().latched_a, Some(c.a.rtp_addr()), "the dropped packet still latched A");
    // The answer SDP arrives.
    c.handle.set_remote(Leg::B, b_addr);
    hop(&c.a.rtp, c.relay_a.0, &pcmu(2, 1), &c.b.rtp, c.relay_b.0).await;
    // A never signalled anything but has latched: B reaches it.
    hop(&c.b.rtp, c.relay_b.0, &pcmu(1, 2), &c.a.rtp, c.relay_a.0).await;
    let s = c.handle.stats();
    assert_eq!((s.dropped, s.dropped_no_remote), (1, 1));
}

#[tokio::test]
async fn third_party_cannot_hijack_an_active_leg() {
    let c = call(false).await;
    hop(&c.a.rtp, c.relay_a.0, &pcmu(1, 1), &c.b.rtp, c.relay_b.0).await;
    hop(&c.b.rtp, c.relay_b.0, &pcmu(1, 2), &c.a.rtp, c.relay_a.0).await;

    let intruder = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let forged = rtp(0, false, 2, 320, 1, b"forged audio forged audio");
    intruder.send_to(&forged, c.relay_a.0).await.unwrap();
    intruder.send_to(&rtcp_rr(1), c.relay_a.1).await.unwrap();
    // A keeps talking: the next thing B hears is A, not the intruder.
    let genuine = pcmu(3, 1);
    hop(&c.a.rtp, c.relay_a.0, &genuine, &c.b.rtp, c.relay_b.0).await;
    // B's audio still goes to A; the intruder gets nothing.
    hop(&c.b.rtp, c.relay_b.0, &pcmu(2, 2), &c.a.rtp, c.relay_a.0).await;
    assert_nothing_queued(&intruder);
    assert_nothing_queued(&c.b.rtp);
    // The intruder's RTCP did latch A's RTCP socket, on which A had sent nothing yet: on
    // loopback it comes from the IP A's RTP latched onto (latch rule 3); it cannot divert A's RTP.
    wait_until("all handled", || {
        let s = c.handle.stats();
        s.dropped_foreign == 1 && s.a_to_b_packets == 3
    })
    .await;
    assert_eq!(c.handle.stats().latched_a, Some(c.a.rtp_addr()));
}

#[tokio::test]
async fn junk_never_latches() {
    let (a, b) = (Phone::new().await, Phone::new().await);
    let b_addr = b.rtp_addr();
    let c = call_with(RelayConfig::default(), a, b, None, Some(b_addr)).await;
    let stranger = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    // A STUN binding request header, a CRLF keep-alive, a short RTP-looking datagram.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7u8; 12]);
    for junk in [&stun[..], b"\r\n\r\n", &[0x80, 0x00, 0x00, 0x01][..]] {
        stranger.send_to(junk, c.relay_a.0).await.unwrap();
    }
    stranger.send_to(&pcmu(1, 9), c.relay_a.1).await.unwrap(); // RTP on the RTCP socket
    wait_until("junk counted", || c.handle.stats().dropped_invalid == 4).await;
    assert_eq!(c.handle.stats().latched_a, None);
    assert_eq!(c.handle.stats().latched_a_rtcp, None);
    assert_nothing_queued(&c.b.rtp);
    // The real phone then latches normally.
    hop(&c.a.rtp, c.relay_a.0, &pcmu(1, 1), &c.b.rtp, c.relay_b.0).await;
    assert_eq!(c.handle.stats().latched_a, Some(c.a.rtp_addr()));
}

#[tokio::test]
async fn a_silent_leg_is_never_taken_over_but_the_signalled_address_and_a_new_sdp_move_it() {
    let (a, b) = (Phone::new().await, Phone::new().await);
    let (a_addr, b_addr) = (a.rtp_addr(), b.rtp_addr());
    let c = call_with(RelayConfig::default(), a, b, Some(a_addr), Some(b_addr)).await;

    // Something else speaks for leg A first and latches it (e.g. the phone's other interface).
    let other = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    hop(&other, c.relay_a.0, &pcmu(1, 7), &c.b.rtp, c.relay_b.0).await;
    hop(&c.b.rtp, c.relay_b.0, &pcmu(1, 2), &other, c.relay_a.0).await;
    // The SDP-advertised socket takes over immediately, although `other` is active.
    hop(&c.a.rtp, c.relay_a.0, &pcmu(2, 1), &c.b.rtp, c.relay_b.0).await;
    hop(&c.b.rtp, c.relay_b.0, &pcmu(2, 2), &c.a.rtp, c.relay_a.0).await;
    assert_eq!(c.handle.stats().latched_a, Some(a_addr));

    // Another source is refused while A talks, and still after A has been silent for longer
    // than the 1 s after which the relay used to let any source take a leg over. (This sleep is
    // the silence under test, not a synchronisation.)
    let moved = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    moved.send_to(&pcmu(3, 1), c.relay_a.0).await.unwrap();
    wait_until("refused", || c.handle.stats().dropped_foreign == 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    moved.send_to(&pcmu(4, 1), c.relay_a.0).await.unwrap();
    wait_until("refused after silence", || c.handle.stats().dropped_foreign == 2).await;
    hop(&c.b.rtp, c.relay_b.0, &pcmu(3, 2), &c.a.rtp, c.relay_a.0).await;
    assert_nothing_queued(&moved);
    assert_nothing_queued(&c.b.rtp);
    assert_eq!(c.handle.stats().latched_a, Some(a_addr));

    // A re-INVITE names a new address (signalling is authenticated): the leg is re-pointed and
    // the first packet latches again.
    c.handle.set_remote(Leg::A, moved.local_addr().unwrap());
    hop(&c.b.rtp, c.relay_b.0, &pcmu(4, 2), &moved, c.relay_a.0).await;
    hop(&moved, c.relay_a.0, &pcmu(5, 1), &c.b.rtp, c.relay_b.0).await;
    assert_eq!(c.handle.stats().latched_a, Some(moved.local_addr().unwrap()));
    assert_nothing_queued(&c.a.rtp);

    // unlatch(): the next valid packet from anywhere latches again.
    c.handle.unlatch(Leg::A);
    let fresh = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    hop(&fresh, c.relay_a.0, &pcmu(6, 1), &c.b.rtp, c.relay_b.0).await;
    hop(&c.b.rtp, c.relay_b.0, &pcmu(5, 2), &fresh, c.relay_a.0).await;
}

#[tokio::test]
async fn rfc4733_events_pass_unchanged() {
    let c = call(false).await;
    // DTMF digit 5: start (marker), two updates, three end packets with the E bit, same
    // timestamp throughout, PT 101 — interleaved with a PCMU packet.
    let ts = 48_000;
    let event = |marker: bool, seq: u16, end: bool, duration: u16| {
        let d = duration.to_be_bytes();
        rtp(101, marker, seq, ts, 0xD7F0, &[5, if end { 0x80 | 10 } else { 10 }, d[0], d[1]])
    };
    let packets = vec![
        pcmu(99, 0xD7F0),
        event(true, 100, false, 160),
        event(false, 101, false, 320),
        event(false, 102, false, 480),
        event(false, 103, true, 640),
        event(false, 104, true, 640),
        event(false, 105, true, 640),
    ];
    for p in &packets {
        hop(&c.a.rtp, c.relay_a.0, p, &c.b.rtp, c.relay_b.0).await;
        hop(&c.b.rtp, c.relay_b.0, p, &c.a.rtp, c.relay_a.0).await;
    }
}

#[tokio::test]
async fn stop_closes_sockets_and_returns_ports() {
    let alloc = PortAllocator::new(free_range(2), LOCALHOST).unwrap();
    let (a, b) = (Phone::new().await, Phone::new().await);
    let leg_a = alloc.allocate().unwrap();
    let leg_b = alloc.allocate().unwrap();
    let relay_a = leg_a.rtp_local_addr();
    let relay_b = leg_b.rtp_local_addr();
    // The allocator's pairs are adjacent: RTCP remote defaults and a=rtcp-less SDP work.
    assert_eq!(leg_a.rtcp_local_addr().port(), relay_a.port() + 1);
    let handle = Relay::start(leg_a, leg_b, Some(a.rtp_addr()), Some(b.rtp_addr()));
    hop(&a.rtp, relay_a, &pcmu(1, 1), &b.rtp, relay_b).await;
    assert_eq!(alloc.available(), 0);
    handle.shutdown().await;
    assert_eq!(alloc.available(), 2);
    // The ports are really free again.
    let again = alloc.allocate().unwrap();
    assert!([relay_a.port(), relay_b.port()].contains(&again.rtp_port()));

    // Dropping the handle stops the relay too.
    let other = alloc.allocate().unwrap();
    let handle = Relay::start(again, other, None, None);
    assert!(handle.is_running());
    drop(handle);
    wait_until("ports back after drop", || alloc.available() == 2).await;

    // stop() + stats(): running turns false.
    let handle = Relay::start(alloc.allocate().unwrap(), alloc.allocate().unwrap(), None, None);
    handle.stop();
    wait_until("stopped", || !handle.stats().running).await;
    wait_until("ports back after stop", || alloc.available() == 2).await;
}

#[tokio::test]
async fn inactivity_signal() {
    let c = call(false).await;
    assert_eq!(c.handle.stats().last_packet_at, None);
    // No media at all: inactive after the timeout, counted from the start.
    tokio::time::timeout(DEADLINE, c.handle.inactive(Duration::from_millis(50))).await.unwrap();
    hop(&c.a.rtp, c.relay_a.0, &pcmu(1, 1), &c.b.rtp, c.relay_b.0).await;
    wait_until("last packet time", || c.handle.stats().last_from_a.is_some()).await;
    assert!(c.handle.idle_for() < Duration::from_secs(2));
    assert_eq!(c.handle.stats().last_from_b, None);
    tokio::time::timeout(DEADLINE, c.handle.inactive(Duration::from_millis(50))).await.unwrap();
    assert!(c.handle.idle_for() >= Duration::from_millis(50));
}

#[tokio::test]
async fn ipv6_legs_and_dual_stack() {
    if UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).await.is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let (a, b) = (Phone::on(v6).await, Phone::on(v6).await);
    let leg_a = LegSockets::bind_ephemeral(v6).await.unwrap();
    let leg_b = LegSockets::bind_ephemeral(v6).await.unwrap();
    let (ra, rb) = (leg_a.rtp_local_addr(), leg_b.rtp_local_addr());
    let handle = Relay::start(leg_a, leg_b, Some(a.rtp_addr()), Some(b.rtp_addr()));
    hop(&a.rtp, ra, &pcmu(1, 1), &b.rtp, rb).await;
    hop(&b.rtp, rb, &pcmu(1, 2), &a.rtp, ra).await;
    drop(handle);

    // Relay sockets on `::` (dual stack), phones on IPv4 loopback: latched addresses are plain
    // IPv4 and replies go out as IPv4-mapped.
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let (a, b) = (Phone::new().await, Phone::new().await);
    let leg_a = LegSockets::bind_ephemeral(any6).await.unwrap();
    let leg_b = LegSockets::bind_ephemeral(any6).await.unwrap();
    let ra: SocketAddr = (LOCALHOST, leg_a.rtp_port()).into();
    let rb: SocketAddr = (LOCALHOST, leg_b.rtp_port()).into();
    let handle = Relay::start(leg_a, leg_b, None, Some(b.rtp_addr()));
    hop(&a.rtp, ra, &pcmu(1, 1), &b.rtp, rb).await;
    hop(&b.rtp, rb, &pcmu(1, 2), &a.rtp, ra).await;
    assert_eq!(handle.stats().latched_a, Some(a.rtp_addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_at_once() {
    const CALLS: usize = 200;
    let mut calls = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        calls.push(call(false).await);
    }
    for round in 0..5u16 {
        for (i, c) in calls.iter().enumerate() {
            c.a.rtp.send_to(&pcmu(round, i as u32), c.relay_a.0).await.unwrap();
            c.b.rtp.send_to(&pcmu(round, !(i as u32)), c.relay_b.0).await.unwrap();
        }
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(recv(&c.b.rtp).await.0, pcmu(round, i as u32));
            assert_eq!(recv(&c.a.rtp).await.0, pcmu(round, !(i as u32)));
        }
    }
}

//! Helpers shared by the socket tests (media-specific: port ranges, fake RTP phones, packets;
//! waiting comes from the workspace's `trunkline-test-support`). Every socket is on loopback.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound for any wait on a condition; reached only when a test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A fresh range of `pairs` even/odd port pairs that are free on 127.0.0.1 right now, above the
/// kernel's ephemeral range (so port-0 binds of parallel tests do not land in it), different for
/// each call and each test process.
pub fn free_range(pairs: u16) -> RangeInclusive<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let len = pairs * 2;
    let slots = (65534 - 61000) / 16; // 16 ports per slot
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < slots, "no free port range found");
        let start = 61000 + ((seed.wrapping_add(n)) % slots) * 16;
        let range = start..=start + len - 1;
        let all_free = range.clone().all(|p| StdUdpSocket::bind((LOCALHOST, p)).is_ok());
        if all_free {
            return range;
        }
    }
}

/// A fake phone: its RTP and RTCP sockets on 127.0.0.1, OS-chosen ports.
pub struct Phone {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

impl Phone {
    pub async fn new() -> Self {
        Self::on(LOCALHOST).await
    }

    pub async fn on(ip: IpAddr) -> Self {
        Self { rtp: UdpSocket::bind((ip, 0)).await.unwrap(), rtcp: UdpSocket::bind((ip, 0)).await.unwrap() }
    }

    pub fn rtp_addr(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }

    pub fn rtcp_addr(&self) -> SocketAddr {
        self.rtcp.local_addr().unwrap()
    }
}

/// Receive one datagram or fail the test after [`DEADLINE`].
pub async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 4096];
    let (n, from) =
        tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf)).await.expect("no datagram before the deadline").unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Nothing is waiting on `sock` right now.
pub fn assert_nothing_queued(sock: &UdpSocket) {
    let mut buf = [0u8; 64];
    match sock.try_recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("unexpected datagram or error: {other:?}"),
    }
}

/// Poll `cond` until it holds, failing the test after [`DEADLINE`] (the workspace's
/// `trunkline_test_support::wait_until`).
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    trunkline_test_support::wait_until(what, DEADLINE, cond).await
}

/// An RTP v2 packet.
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let fields = trunkline_media::rtp::RtpFields { marker, payload_type: pt, sequence: seq, timestamp: ts, ssrc };
    trunkline_media::rtp::build_rtp(&fields, payload)
}

/// A G.711 µ-law packet with 20 ms (160 samples) of recognisable payload.
pub fn pcmu(seq: u16, ssrc: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..160u32).map(|i| (i as u8) ^ (seq as u8).wrapping_mul(31)).collect();
    rtp(0, seq == 0, seq, u32::from(seq) * 160, ssrc, &payload)
}

/// An RTCP receiver report without report blocks (8 bytes).
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

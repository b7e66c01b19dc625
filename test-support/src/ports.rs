//! Free loopback ports for sockets a test cannot bind on port 0 itself (child processes,
//! restarts on the same address, UDP and TCP on one port). Free "right now": another process
//! may still take one, so callers bind soon after.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

/// A port free right now for both UDP and TCP (sipp cannot take port 0; `-t t1` uses TCP).
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// A free loopback TCP port right now.
pub fn free_tcp_port() -> u16 {
    free_tcp_addr().port()
}

/// A free loopback TCP address right now.
pub fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A port `p` with UDP and TCP free on `p` and `p + 1` (baresip's TLS transport takes `p + 1`).
pub fn free_sip_port() -> u16 {
    for _ in 0..200 {
        let p = free_udp_port();
        if p < 65_000
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free SIP port pair");
}

/// 20 free UDP ports for a phone's RTP, in 15000–19919: away from the kernel's ephemeral
/// range and from the gateway fixture's 40000–59999.
pub fn free_rtp_range() -> RangeInclusive<u16> {
    use rand::Rng;
    for _ in 0..200 {
        let base = rand::rng().random_range(15_000u16..19_900) & !1;
        if (base..base + 20).all(|p| UdpSocket::bind(("0.0.0.0", p)).is_ok()) {
            return base..=base + 19;
        }
    }
    panic!("no free RTP range");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_udp_port_binds_for_udp_and_tcp() {
        let p = free_udp_port();
        UdpSocket::bind(("127.0.0.1", p)).expect("UDP");
        TcpListener::bind(("127.0.0.1", p)).expect("TCP");
    }

    #[test]
    fn an_rtp_range_is_twenty_ports_from_an_even_one() {
        let r = free_rtp_range();
        assert_eq!(r.start() % 2, 0);
        assert_eq!(r.end() - r.start(), 19);
    }
}

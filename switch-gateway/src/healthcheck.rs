//! `switch-gateway healthcheck`: is the gateway this config describes up? A container's
//! `HEALTHCHECK` (the image has no shell and no curl).
//!
//! It sends a SIP `OPTIONS` over UDP to `sip_listen` (a wildcard address is reached on
//! loopback) and waits for the `200 OK`. The answer comes from the gateway's core task, so it
//! proves more than an open socket: the SIP loop and the core that registers phones and carries
//! calls are running. The cloud link is not part of it on purpose: a gateway whose cloud is
//! away still registers its phones and connects their local calls, and restarting it would not
//! bring the cloud back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Where a local health check sends for a gateway listening on `sip_listen`.
pub fn target(sip_listen: SocketAddr) -> SocketAddr {
    match sip_listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), sip_listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), sip_listen.port()),
        _ => sip_listen,
    }
}

/// `OPTIONS` to `sip_listen` within `timeout` (sent again after 0.5, 1, 2 s … like a SIP
/// client over UDP): `Ok(what answered)` on `200`, else why not.
pub async fn check(sip_listen: SocketAddr, timeout: Duration) -> Result<String, String> {
    let to = target(sip_listen);
    let any: SocketAddr = if to.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(any).await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    sock.connect(to).await.map_err(|e| format!("sip {to}: {e}"))?;
    let local = sock.local_addr().map_err(|e| format!("UDP socket: {e}"))?;
    let token: u64 = rand::random();
    let call_id = format!("{token:016x}@healthcheck");
    let request = format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-hc{token:016x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:healthcheck@{local}>;tag=hc{token:08x}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         User-Agent: switch-gateway-healthcheck\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = Duration::from_millis(500);
    let mut buf = vec![0u8; 65_536];
    loop {
        // ICMP "port unreachable" from an earlier datagram surfaces here on a connected socket.
        sock.send(request.as_bytes()).await.map_err(|e| format!("sip udp {to}: {e}"))?;
        let resend = (Instant::now() + interval).min(deadline);
        interval = (interval * 2).min(Duration::from_secs(4));
        loop {
            let n = match tokio::time::timeout_at(resend, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("sip udp {to}: {e} (is the gateway running?)")),
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if !text.lines().any(|l| l.to_ascii_lowercase().starts_with("call-id:") && l.contains(&call_id)) {
                continue; // not ours
            }
            let status = text.lines().next().unwrap_or_default().trim().to_string();
            if status.starts_with("SIP/2.0 1") {
                continue; // provisional: wait for the final answer
            }
            let ms = start.elapsed().as_millis();
            return if status.starts_with("SIP/2.0 200") {
                Ok(format!("sip udp {to}: {status} in {ms} ms"))
            } else {
                Err(format!("sip udp {to}: answered {status:?}"))
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("sip udp {to}: no answer to OPTIONS within {} ms", timeout.as_millis()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_is_checked_on_loopback() {
        assert_eq!(target("0.0.0.0:5060".parse().unwrap()), "127.0.0.1:5060".parse().unwrap());
        assert_eq!(target("[::]:5060".parse().unwrap()), "[::1]:5060".parse().unwrap());
        assert_eq!(target("192.168.1.10:5060".parse().unwrap()), "192.168.1.10:5060".parse().unwrap());
    }

    #[tokio::test]
    async fn nothing_listening_fails_quickly() {
        // A port that was free a moment ago: "port unreachable", or silence until the timeout.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = check(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(700)).await.unwrap_err();
        assert!(err.contains("is the gateway running") || err.contains("no answer"), "{err}");
    }

    /// A stand-in gateway that answers each OPTIONS with `status` (after a stray datagram and
    /// a 100 Trying), echoing its Call-ID.
    async fn responder(status: &'static str) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, src) = sock.recv_from(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(req.starts_with("OPTIONS sip:"), "{req}");
                let call_id = req.lines().find(|l| l.starts_with("Call-ID:")).unwrap().to_string();
                let _ = sock.send_to(b"SIP/2.0 200 OK\r\nCall-ID: someone-else\r\n\r\n", src).await;
                let _ = sock.send_to(format!("SIP/2.0 100 Trying\r\n{call_id}\r\n\r\n").as_bytes(), src).await;
                let _ = sock.send_to(format!("SIP/2.0 {status}\r\n{call_id}\r\nCSeq: 1 OPTIONS\r\n\r\n").as_bytes(), src).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ok_means_healthy_anything_else_not() {
        let ok = check(responder("200 OK").await, Duration::from_secs(3)).await.unwrap();
        assert!(ok.contains("SIP/2.0 200 OK"), "{ok}");
        let err = check(responder("503 Service Unavailable").await, Duration::from_secs(3)).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }
}

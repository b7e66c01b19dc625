//! UDP helpers for the media measurements: bigger socket buffers (so that the load
//! generator's own sockets are not where packets get lost), kernel receive timestamps
//! (`SO_TIMESTAMPNS`: when a datagram reached the socket, so a late wake-up of the load
//! generator does not count as delay added by the gateway), the wall clock in nanoseconds
//! that payloads carry, and the kernel's drop counter of a socket (`/proc/net/udp`).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// CLOCK_REALTIME in nanoseconds (what SO_TIMESTAMPNS reports; payload stamps use it too).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ask for `bytes` of receive and send buffer (the kernel caps it at rmem_max/wmem_max).
pub fn set_buffers(sock: &UdpSocket, bytes: usize) {
    let fd = sock.as_raw_fd();
    let v = bytes as libc::c_int;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a pointer to a local int of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Turn on SO_TIMESTAMPNS (kernel receive time in a control message of each datagram).
pub fn enable_timestamps(sock: &UdpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a local int of the right size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// One datagram: length, source, and the kernel's receive time (ns, CLOCK_REALTIME) when
/// SO_TIMESTAMPNS is on (else the time it was read).
pub async fn recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || recvmsg_stamped(sock.as_raw_fd(), buf)) {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn recvmsg_stamped(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    // SAFETY: recvmsg into local, correctly sized buffers; the control messages are walked
    // with the CMSG_* helpers within `control`'s length.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let source = match addr.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in);
                SocketAddr::from((u32::from_be(a.sin_addr.s_addr).to_be_bytes(), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in6);
                SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
            }
            _ => return Err(std::io::Error::other("datagram from an unknown address family")),
        };
        Ok((n as usize, source, stamp.unwrap_or_else(now_ns)))
    }
}

/// The kernel's count of datagrams dropped at the IPv4 UDP sockets bound to `ports` (full
/// receive buffer), from the last column of /proc/net/udp.
pub fn drops(ports: &[u16]) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/udp") else { return 0 };
    let mut total = 0;
    for line in s.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = f.get(1) else { continue };
        let Some(port) = local.split(':').nth(1).and_then(|p| u16::from_str_radix(p, 16).ok()) else { continue };
        if ports.contains(&port) {
            total += f.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kernel_timestamps_arrive() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable_timestamps(&a).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = now_ns();
        b.send_to(b"x", a.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, src, at) = recv_stamped(&a, &mut buf).await.unwrap();
        assert_eq!((n, src), (1, b.local_addr().unwrap()));
        assert!(at >= before && at <= now_ns(), "{before} {at}");
    }
}

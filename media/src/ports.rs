//! RTP/RTCP port pairs: a thread-safe pool of even ports in a configured range.
//!
//! [`PortAllocator::allocate`] binds a UDP socket on an even port `p` (RTP) and one on `p + 1`
//! (RTCP) at the allocator's IP and returns them as [`LegSockets`]. The pair is drawn **at
//! random** from the free ones: a third party that saw one call's ports cannot predict the next
//! call's and stream RTP at them before the phone does (see [`crate::latch`], rule 1). A port
//! that another process holds (bind fails with "address in use" on either socket) is skipped and
//! stays in the pool, to be tried again later; at most [`MAX_TRIES`] pairs are tried per call.
//! Dropping the `LegSockets` closes both sockets and puts the pair in a short cooling queue first
//! (a quarter of the range, at most [`MAX_COOLING`] pairs) before it can be drawn again, so late
//! packets of an ended call are unlikely to reach the next one; when nothing else is free, cooling
//! pairs are used.
//!
//! [`ReadyPairs`] keeps a few pairs bound ahead of need, so a sans-IO core can be handed one
//! without a syscall in its call stack; its driver tops it up between the core's calls.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;

/// Why a port pair could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("port range {start}..={end} holds no even RTP port with room for RTCP on port+1")]
    EmptyRange { start: u16, end: u16 },
    #[error("no free RTP/RTCP port pair in {start}..={end}")]
    Exhausted { start: u16, end: u16 },
    #[error("sockets can only be created from within a tokio runtime")]
    NoRuntime,
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Pairs tried by one [`PortAllocator::allocate`] before it gives up ([`AllocError::Exhausted`]).
pub const MAX_TRIES: usize = 64;
/// Upper bound of the queue of just-freed pairs that are not drawn while others are free.
pub const MAX_COOLING: usize = 256;

#[derive(Default)]
struct Free {
    /// Drawn from at random.
    ready: Vec<u16>,
    /// Just freed, oldest first.
    cooling: VecDeque<u16>,
}

impl Free {
    fn len(&self) -> usize {
        self.ready.len() + self.cooling.len()
    }
}

struct Pool {
    bind_ip: IpAddr,
    start: u16,
    end: u16,
    capacity: usize,
    cooling_max: usize,
    free: Mutex<Free>,
}

impl Pool {
    fn free(&self) -> MutexGuard<'_, Free> {
        // A panic while holding this lock cannot leave the lists inconsistent: keep going.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, port: u16) {
        let mut free = self.free();
        free.cooling.push_back(port);
        while free.cooling.len() > self.cooling_max {
            let Some(p) = free.cooling.pop_front() else { break };
            free.ready.push(p);
        }
    }

    /// Take a random ready pair (cooling ones once no ready one is left).
    fn draw(&self) -> Option<u16> {
        let mut free = self.free();
        if free.ready.is_empty() {
            let cooled: Vec<u16> = free.cooling.drain(..).collect();
            free.ready.extend(cooled);
        }
        if free.ready.is_empty() {
            return None;
        }
        let i = rand::random_range(0..free.ready.len());
        Some(free.ready.swap_remove(i))
    }
}

/// Hands out RTP/RTCP socket pairs on even ports of a range. Cheap to clone; all clones share
/// one pool. `Send + Sync`.
#[derive(Clone)]
pub struct PortAllocator {
    pool: Arc<Pool>,
}

impl fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortAllocator")
            .field("bind_ip", &self.pool.bind_ip)
            .field("range", &(self.pool.start..=self.pool.end))
            .field("available", &self.available())
            .field("capacity", &self.pool.capacity)
            .finish()
    }
}

impl PortAllocator {
    /// A pool of the even ports `p` in `range` with `p + 1` also in `range`, bound on `bind_ip`
    /// (a concrete address, or `0.0.0.0` / `::`). Port 0 is never used.
    pub fn new(range: RangeInclusive<u16>, bind_ip: IpAddr) -> Result<Self, AllocError> {
        let (start, end) = (*range.start(), *range.end());
        let first = start.max(2).checked_add(start.max(2) % 2);
        let ready: Vec<u16> = match first {
            Some(first) if first < end => (first..end).step_by(2).collect(),
            _ => Vec::new(),
        };
        if ready.is_empty() {
            return Err(AllocError::EmptyRange { start, end });
        }
        let capacity = ready.len();
        Ok(Self {
            pool: Arc::new(Pool {
                bind_ip,
                start,
                end,
                capacity,
                cooling_max: (capacity / 4).min(MAX_COOLING),
                free: Mutex::new(Free { ready, cooling: VecDeque::new() }),
            }),
        })
    }

    /// Bind a fresh RTP/RTCP pair on a random free even port. Must run inside a tokio runtime
    /// (the sockets are registered with its reactor). Skips ports in use by other processes;
    /// [`AllocError::Exhausted`] when every pair is handed out or held elsewhere (or
    /// [`MAX_TRIES`] pairs in a row were); [`AllocError::Bind`] for any other bind failure (e.g.
    /// `bind_ip` is not an address of this machine).
    pub fn allocate(&self) -> Result<LegSockets, AllocError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AllocError::NoRuntime);
        }
        let pool = &self.pool;
        // Busy pairs are kept out of the draw until this call ends, so no pair is tried twice.
        let mut busy = Vec::new();
        let result = self.try_allocate(&mut busy);
        if !busy.is_empty() {
            pool.free().ready.extend(busy);
        }
        result
    }

    fn try_allocate(&self, busy: &mut Vec<u16>) -> Result<LegSockets, AllocError> {
        let pool = &self.pool;
        let attempts = pool.free().len().min(MAX_TRIES);
        for _ in 0..attempts {
            let Some(port) = pool.draw() else {
                break;
            };
            match bind_pair(pool.bind_ip, port) {
                Ok((rtp, rtcp)) => {
                    let lease = PortLease { port, pool: Arc::clone(pool) };
                    return LegSockets::with_lease(rtp, rtcp, Some(lease))
                        .map_err(|source| AllocError::Bind { addr: SocketAddr::new(pool.bind_ip, port), source });
                }
                Err((addr, e)) if skippable(&e) => {
                    tracing::debug!(%addr, error = %e, "RTP port busy, skipping");
                    busy.push(port);
                }
                Err((addr, source)) => {
                    busy.push(port);
                    return Err(AllocError::Bind { addr, source });
                }
            }
        }
        Err(AllocError::Exhausted { start: pool.start, end: pool.end })
    }

    /// Pairs currently in the pool (not handed out; some may be held by other processes).
    pub fn available(&self) -> usize {
        self.pool.free().len()
    }

    /// Number of pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.pool.capacity
    }

    pub fn bind_ip(&self) -> IpAddr {
        self.pool.bind_ip
    }
}

fn skippable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied)
}

fn bind_pair(ip: IpAddr, port: u16) -> Result<(UdpSocket, UdpSocket), (SocketAddr, io::Error)> {
    let rtp = bind_one(SocketAddr::new(ip, port))?;
    let rtcp = bind_one(SocketAddr::new(ip, port + 1))?;
    Ok((rtp, rtcp))
}

fn bind_one(addr: SocketAddr) -> Result<UdpSocket, (SocketAddr, io::Error)> {
    let sock = std::net::UdpSocket::bind(addr).map_err(|e| (addr, e))?;
    sock.set_nonblocking(true).map_err(|e| (addr, e))?;
    UdpSocket::from_std(sock).map_err(|e| (addr, e))
}

/// Returns its port pair to the pool when dropped.
struct PortLease {
    port: u16,
    pool: Arc<Pool>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.release(self.port);
    }
}

/// Send one datagram from `sock` to `dest` now, straight to the kernel.
///
/// Not tokio's `try_send_to`: that one refuses to try (`WouldBlock`, nothing sent) until the
/// reactor has once seen the socket writable, which for a socket registered moments ago (a call's
/// new leg) is usually not yet, so the first datagrams of a call were silently lost: in the NAT
/// lab the gateway's first STUN Binding and TURN Allocate never left, and its server-reflexive
/// and relayed candidates came one retransmission (100 ms, 300 ms) late.
pub fn send_now(sock: &UdpSocket, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_to(data, &socket2::SockAddr::from(dest))
}

/// One call leg's local RTP and RTCP sockets. From [`PortAllocator::allocate`] (adjacent even/odd
/// ports, returned to the pool on drop) or [`LegSockets::new`] / [`LegSockets::bind_ephemeral`].
pub struct LegSockets {
    // Field order matters: the sockets close before the lease hands the ports back.
    rtp: UdpSocket,
    rtcp: UdpSocket,
    rtp_local: SocketAddr,
    rtcp_local: SocketAddr,
    lease: Option<PortLease>,
}

impl fmt::Debug for LegSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegSockets")
            .field("rtp", &self.rtp_local)
            .field("rtcp", &self.rtcp_local)
            .field("pooled", &self.lease.is_some())
            .finish()
    }
}

impl LegSockets {
    /// Wrap two already bound sockets (not from a pool).
    pub fn new(rtp: UdpSocket, rtcp: UdpSocket) -> io::Result<Self> {
        Self::with_lease(rtp, rtcp, None)
    }

    /// Two sockets on OS-chosen ports of `ip` (not necessarily adjacent: advertise the RTCP port
    /// with `a=rtcp` if it matters). Meant for tests and tools.
    pub async fn bind_ephemeral(ip: IpAddr) -> io::Result<Self> {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let rtcp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        Self::new(rtp, rtcp)
    }

    fn with_lease(rtp: UdpSocket, rtcp: UdpSocket, lease: Option<PortLease>) -> io::Result<Self> {
        let rtp_local = rtp.local_addr()?;
        let rtcp_local = rtcp.local_addr()?;
        Ok(Self { rtp, rtcp, rtp_local, rtcp_local, lease })
    }

    /// The RTP port to advertise in SDP.
    pub fn rtp_port(&self) -> u16 {
        self.rtp_local.port()
    }

    pub fn rtp_local_addr(&self) -> SocketAddr {
        self.rtp_local
    }

    pub fn rtcp_local_addr(&self) -> SocketAddr {
        self.rtcp_local
    }

    pub fn rtp_socket(&self) -> &UdpSocket {
        &self.rtp
    }

    pub fn rtcp_socket(&self) -> &UdpSocket {
        &self.rtcp
    }

    /// Whether the pair came from a [`PortAllocator`].
    pub fn is_pooled(&self) -> bool {
        self.lease.is_some()
    }

    /// Drop every datagram the reactor has seen queued on either socket; how many. Only
    /// datagrams tokio already knows of: no syscall on a quiet socket, and one that arrived a
    /// moment ago may stay.
    pub fn discard_queued(&self) -> usize {
        // A short buffer is enough: the rest of a longer datagram is discarded with it.
        let mut buf = [0u8; 16];
        let mut n = 0;
        for sock in [&self.rtp, &self.rtcp] {
            while sock.try_recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// Pairs bound ahead of need: [`ReadyPairs::take`] only pops one (no syscall, so a sans-IO
/// core may call it), [`ReadyPairs::refill`] binds new ones up to the target (the driver calls
/// it between the core's calls). Taken pairs are ordinary [`LegSockets`]: dropping them gives
/// the ports back to the allocator. Cheap to clone; clones share the pairs.
#[derive(Clone)]
pub struct ReadyPairs {
    alloc: PortAllocator,
    target: usize,
    ready: Arc<Mutex<VecDeque<LegSockets>>>,
}

impl fmt::Debug for ReadyPairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyPairs").field("ready", &self.len()).field("target", &self.target).finish()
    }
}

impl ReadyPairs {
    /// Up to `target` pairs of `alloc` kept bound (never more than the range holds). Empty until
    /// the first [`ReadyPairs::refill`].
    pub fn new(alloc: PortAllocator, target: usize) -> Self {
        let target = target.min(alloc.capacity());
        Self { alloc, target, ready: Arc::default() }
    }

    fn ready(&self) -> MutexGuard<'_, VecDeque<LegSockets>> {
        // Popping or pushing cannot leave the queue inconsistent: keep going after a panic.
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bound pair, if one is ready: the oldest (ports were drawn at random when bound).
    pub fn take(&self) -> Option<LegSockets> {
        self.ready().pop_front()
    }

    /// Discard what strangers sent to the waiting pairs (it must not latch a future call's
    /// leg), then bind pairs until `target` are ready. An error when the allocator could not
    /// give enough (exhausted, or a bind failed); the pairs it could give are kept.
    pub fn refill(&self) -> Result<(), AllocError> {
        let mut ready = self.ready();
        for pair in ready.iter() {
            pair.discard_queued();
        }
        self.bind_missing(&mut ready)
    }

    /// Bind pairs until `target` are ready, without looking at the waiting ones: the cheap
    /// half of [`ReadyPairs::refill`] for a driver that discards less often than it refills.
    pub fn top_up(&self) -> Result<(), AllocError> {
        self.bind_missing(&mut self.ready())
    }

    fn bind_missing(&self, ready: &mut VecDeque<LegSockets>) -> Result<(), AllocError> {
        while ready.len() < self.target {
            ready.push_back(self.alloc.allocate()?);
        }
        Ok(())
    }

    /// Pairs ready now.
    pub fn len(&self) -> usize {
        self.ready().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn allocator(&self) -> &PortAllocator {
        &self.alloc
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::time::Duration;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// `pairs` even/odd pairs free on 127.0.0.1 now, different per call and per process.
    fn free_range(pairs: u16) -> RangeInclusive<u16> {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let slots = (60990 - 56000) / 16;
        let seed = (std::process::id() as u16).wrapping_mul(7919);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            assert!(n < slots, "no free port range found");
            let start = 56000 + (seed.wrapping_add(n) % slots) * 16;
            let range = start..=start + pairs * 2 - 1;
            if range.clone().all(|p| std::net::UdpSocket::bind((LOCALHOST, p)).is_ok()) {
                return range;
            }
        }
    }

    #[tokio::test]
    async fn taking_a_ready_pair_binds_nothing_and_refill_tops_the_pool_up() {
        let alloc = PortAllocator::new(free_range(6), LOCALHOST).unwrap();
        let pool = ReadyPairs::new(alloc.clone(), 4);
        assert!(pool.take().is_none(), "nothing is bound before the first refill");
        pool.refill().unwrap();
        assert_eq!((pool.len(), alloc.available()), (4, 2));
        let taken = pool.take().unwrap();
        assert!(taken.is_pooled());
        // Already bound: the allocator did not move.
        assert_eq!((pool.len(), alloc.available()), (3, 2));
        pool.refill().unwrap();
        assert_eq!((pool.len(), alloc.available()), (4, 1));
        // A taken pair dropped goes back to the allocator, as any pair does.
        drop(taken);
        assert_eq!(alloc.available(), 2);
    }

    #[tokio::test]
    async fn an_exhausted_range_empties_the_pool_and_freed_pairs_refill_it() {
        let alloc = PortAllocator::new(free_range(3), LOCALHOST).unwrap();
        // More than the range holds: the target is the range.
        let pool = ReadyPairs::new(alloc.clone(), 32);
        pool.refill().unwrap();
        assert_eq!(pool.len(), 3);
        let taken: Vec<LegSockets> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(taken.len(), 3);
        assert!(pool.take().is_none(), "no ports left: nothing to hand out");
        assert!(matches!(pool.refill(), Err(AllocError::Exhausted { .. })));
        drop(taken);
        pool.refill().unwrap();
        assert_eq!(pool.len(), 3);
    }

    #[tokio::test]
    async fn datagrams_sent_to_a_waiting_pair_are_discarded_before_a_call_gets_it() {
        let alloc = PortAllocator::new(free_range(1), LOCALHOST).unwrap();
        let pool = ReadyPairs::new(alloc, 1);
        pool.refill().unwrap();
        let waiting = pool.take().unwrap();
        let stranger = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
        stranger.send_to(b"junk rtp", waiting.rtp_local_addr()).unwrap();
        stranger.send_to(b"junk rtcp", waiting.rtcp_local_addr()).unwrap();
        // Once the reactor has seen them, as it will have by the time a later call comes.
        let seen = async {
            waiting.rtp_socket().readable().await.unwrap();
            waiting.rtcp_socket().readable().await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), seen).await.expect("the datagrams arrive");
        pool.ready().push_front(waiting);
        pool.refill().unwrap();
        let pair = pool.take().unwrap();
        let mut buf = [0u8; 64];
        assert!(pair.rtp_socket().try_recv_from(&mut buf).is_err(), "nothing left for the call");
        assert!(pair.rtcp_socket().try_recv_from(&mut buf).is_err());
    }
}

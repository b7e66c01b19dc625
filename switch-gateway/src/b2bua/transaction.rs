//! SIP transactions (RFC 3261 §17, with the `Accepted` states of RFC 6026): the four state
//! machines as named states, and a timer table per transaction in the style of quinn-proto
//! (one deadline per named timer; the core's `poll_timeout` is the minimum over them). Sans-IO:
//! every call takes `now`; what must go on the wire comes back as bytes.
//!
//! One deliberate addition: a server INVITE transaction in `Accepted` also retransmits our 2xx
//! on timer G and reports a missing ACK on timer H (RFC 3261 §13.3.1.4 gives that job to the
//! UAS core; keeping it here puts every SIP timer in one table).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trunkline_sip::Request;

use super::ClientOwner;
use crate::registrar::Transport;

/// RFC 3261 timer T1 (RTT estimate), T2 (max retransmit interval), T4 (max time a message
/// stays in the network).
pub(super) const T1: Duration = Duration::from_millis(500);
pub(super) const T2: Duration = Duration::from_secs(4);
pub(super) const T4: Duration = Duration::from_secs(5);
/// Timers B/F/H/J (and L/M): 64·T1.
pub(super) const T64: Duration = Duration::from_secs(32);
/// Timer D over an unreliable transport (RFC 3261 §17.1.1.2: at least 32 s).
const TIMER_D: Duration = Duration::from_secs(32);

/// The named timers of RFC 3261 §17 (L and M: RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Client INVITE retransmission (unreliable transports).
    A,
    /// Client INVITE gives up (no final answer).
    B,
    /// Client INVITE: absorb retransmitted non-2xx finals.
    D,
    /// Client non-INVITE retransmission (unreliable transports).
    E,
    /// Client non-INVITE gives up.
    F,
    /// Server INVITE: retransmit our final until the ACK (unreliable transports).
    G,
    /// Server INVITE: give up waiting for the ACK.
    H,
    /// Server INVITE: absorb retransmitted ACKs.
    I,
    /// Server non-INVITE: absorb retransmitted requests.
    J,
    /// Client non-INVITE: absorb retransmitted finals.
    K,
    /// Server INVITE after a 2xx: absorb retransmitted INVITEs.
    L,
    /// Client INVITE after a 2xx: take retransmitted 2xx (each gets an ACK).
    M,
}

impl Timer {
    const ALL: [Timer; 12] =
        [Timer::A, Timer::B, Timer::D, Timer::E, Timer::F, Timer::G, Timer::H, Timer::I, Timer::J, Timer::K, Timer::L, Timer::M];

    /// Retransmission timers yield to ending ones due at the same instant: nothing goes out
    /// again at the moment a transaction gives up.
    fn retransmits(self) -> bool {
        matches!(self, Timer::A | Timer::E | Timer::G)
    }
}

/// A transaction's deadlines, one slot per named timer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TimerTable([Option<Instant>; 12]);

impl TimerTable {
    pub(super) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    pub(super) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The earliest timer due at `now`, taken out of the table.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let t = Timer::ALL
            .into_iter()
            .filter_map(|t| self.get(t).filter(|at| *at <= now).map(|at| (at, t.retransmits(), t as usize, t)))
            .min_by_key(|(at, r, i, _)| (*at, *r, *i))
            .map(|(.., t)| t)?;
        self.stop(t);
        Some(t)
    }
}

pub(super) fn unreliable(transport: Transport) -> bool {
    transport == Transport::Udp
}

// ---------------------------------------------------------------- server

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServerInviteState {
    Proceeding,
    /// A non-2xx final sent; retransmitted until the ACK.
    Completed,
    /// The ACK for our non-2xx came.
    Confirmed,
    /// A 2xx sent (RFC 6026): retransmitted INVITEs get it again.
    Accepted,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServerState {
    Invite(ServerInviteState),
    NonInvite(ServerNonInviteState),
}

/// What a server transaction's timers ask of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ServerTimeout {
    /// Send our last response again.
    Retransmit(Vec<u8>),
    /// Timer H after our 2xx: the caller never ACKed it.
    NoAck,
}

pub(super) struct ServerTx {
    pub(super) state: ServerState,
    pub(super) to: SocketAddr,
    pub(super) transport: Transport,
    /// The call this INVITE transaction belongs to.
    pub(super) call: Option<u64>,
    /// Opening order: transactions due at the same instant fire in this order.
    pub(super) order: u64,
    last: Option<Vec<u8>>,
    g_interval: Duration,
    timers: TimerTable,
}

impl ServerTx {
    pub(super) fn new(invite: bool, to: SocketAddr, transport: Transport, order: u64) -> ServerTx {
        let state = if invite {
            ServerState::Invite(ServerInviteState::Proceeding)
        } else {
            ServerState::NonInvite(ServerNonInviteState::Trying)
        };
        ServerTx { state, to, transport, call: None, order, last: None, g_interval: T1, timers: TimerTable::default() }
    }

    /// What a retransmitted request gets: our last response, if any.
    pub(super) fn last_response(&self) -> Option<&[u8]> {
        self.last.as_deref()
    }

    /// We sent response `status` (`data`) in this transaction.
    pub(super) fn on_send(&mut self, now: Instant, status: u16, data: Vec<u8>) {
        use ServerInviteState as I;
        use ServerNonInviteState as N;
        let udp = unreliable(self.transport);
        match self.state {
            ServerState::Invite(I::Proceeding) => {
                if status >= 200 {
                    self.state = ServerState::Invite(if status < 300 { I::Accepted } else { I::Completed });
                    if udp {
                        self.g_interval = T1;
                        self.timers.set(Timer::G, now + T1);
                    }
                    self.timers.set(Timer::H, now + T64);
                    if status < 300 {
                        self.timers.set(Timer::L, now + T64);
                    }
                }
            }
            ServerState::NonInvite(N::Trying | N::Proceeding) => {
                if status < 200 {
                    self.state = ServerState::NonInvite(N::Proceeding);
                } else {
                    self.state = ServerState::NonInvite(N::Completed);
                    self.timers.set(Timer::J, now + if udp { T64 } else { Duration::ZERO });
                }
            }
            // A final answer was given: nothing else belongs to this transaction.
            _ => return,
        }
        self.last = Some(data);
    }

    /// An ACK matching this transaction. True when the transaction absorbs it (the ACK of our
    /// non-2xx, or a retransmission of it); false when it is the core's (RFC 6026: the ACK of
    /// our 2xx).
    pub(super) fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Invite(ServerInviteState::Completed) => {
                self.state = ServerState::Invite(ServerInviteState::Confirmed);
                self.timers.stop(Timer::G);
                self.timers.stop(Timer::H);
                let i = if unreliable(self.transport) { T4 } else { Duration::ZERO };
                self.timers.set(Timer::I, now + i);
                true
            }
            ServerState::Invite(ServerInviteState::Accepted) => false,
            _ => true,
        }
    }

    /// Our 2xx was ACKed (in its own transaction), or its call ended: stop repeating it and
    /// waiting for the ACK. Retransmitted INVITEs are still absorbed until timer L.
    pub(super) fn stop_2xx(&mut self) {
        if self.state == ServerState::Invite(ServerInviteState::Accepted) {
            self.timers.stop(Timer::G);
            self.timers.stop(Timer::H);
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Only absorbing retransmissions from now on: a non-INVITE answered finally, or an
    /// INVITE whose 2xx is no longer repeated (ACKed, or its call is over).
    pub(super) fn lingers_only(&self) -> bool {
        match self.state {
            ServerState::NonInvite(ServerNonInviteState::Completed) => true,
            ServerState::Invite(ServerInviteState::Accepted) => {
                self.timers.get(Timer::G).is_none() && self.timers.get(Timer::H).is_none()
            }
            _ => false,
        }
    }

    pub(super) fn is_terminated(&self) -> bool {
        matches!(
            self.state,
            ServerState::Invite(ServerInviteState::Terminated) | ServerState::NonInvite(ServerNonInviteState::Terminated)
        )
    }

    /// Fire every timer due at `now`.
    pub(super) fn on_timeout(&mut self, now: Instant) -> Vec<ServerTimeout> {
        use ServerInviteState as I;
        let mut out = vec![];
        while let Some(t) = self.timers.pop_expired(now) {
            match (t, self.state) {
                (Timer::G, ServerState::Invite(I::Completed | I::Accepted)) => {
                    if let Some(data) = &self.last {
                        out.push(ServerTimeout::Retransmit(data.clone()));
                    }
                    self.g_interval = (self.g_interval * 2).min(T2);
                    self.timers.set(Timer::G, now + self.g_interval);
                }
                (Timer::H, ServerState::Invite(I::Completed)) => self.terminate(),
                (Timer::H, ServerState::Invite(I::Accepted)) => {
                    // Timer L (due with H) ends the transaction itself.
                    self.timers.stop(Timer::G);
                    out.push(ServerTimeout::NoAck);
                }
                (Timer::I, ServerState::Invite(I::Confirmed))
                | (Timer::L, ServerState::Invite(I::Accepted))
                | (Timer::J, ServerState::NonInvite(ServerNonInviteState::Completed)) => self.terminate(),
                _ => {}
            }
        }
        out
    }

    fn terminate(&mut self) {
        self.state = match self.state {
            ServerState::Invite(_) => ServerState::Invite(ServerInviteState::Terminated),
            ServerState::NonInvite(_) => ServerState::NonInvite(ServerNonInviteState::Terminated),
        };
        self.timers = TimerTable::default();
    }
}

// ---------------------------------------------------------------- client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientInviteState {
    Calling,
    Proceeding,
    /// A non-2xx final came (and was ACKed).
    Completed,
    /// A 2xx came (RFC 6026): its retransmissions still reach the core.
    Accepted,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientState {
    Invite(ClientInviteState),
    NonInvite(ClientNonInviteState),
}

/// What to do with a response that matched a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Received {
    /// ACK it within the transaction (a non-2xx final to an INVITE, RFC 3261 §17.1.1.3).
    pub(super) ack: bool,
    /// Hand it to the transaction's owner; `Some(true)` for the first final.
    pub(super) deliver: Option<bool>,
}

/// What a client transaction's timers ask of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ClientTimeout {
    /// Send the request again.
    Retransmit(Vec<u8>),
    /// Timer B or F: no final answer came (the owner treats it as a 408).
    TimedOut,
}

pub(super) struct ClientTx {
    pub(super) state: ClientState,
    pub(super) to: SocketAddr,
    pub(super) transport: Transport,
    pub(super) owner: ClientOwner,
    /// The INVITE, for the ACK of a non-2xx final (same branch) and of a 2xx nobody wants.
    pub(super) request: Option<Request>,
    pub(super) order: u64,
    data: Vec<u8>,
    interval: Duration,
    timers: TimerTable,
}

impl ClientTx {
    /// A transaction for `req`, sent (by the caller) at `now`.
    pub(super) fn new(
        now: Instant,
        req: Request,
        to: SocketAddr,
        transport: Transport,
        owner: ClientOwner,
        order: u64,
    ) -> ClientTx {
        let invite = req.method == trunkline_sip::Method::Invite;
        let mut timers = TimerTable::default();
        let (retransmit, give_up, state) = if invite {
            (Timer::A, Timer::B, ClientState::Invite(ClientInviteState::Calling))
        } else {
            (Timer::E, Timer::F, ClientState::NonInvite(ClientNonInviteState::Trying))
        };
        if unreliable(transport) {
            timers.set(retransmit, now + T1);
        }
        timers.set(give_up, now + T64);
        let data = req.to_bytes();
        ClientTx { state, to, transport, owner, request: invite.then_some(req), order, data, interval: T1, timers }
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.data
    }

    pub(super) fn on_response(&mut self, now: Instant, status: u16) -> Received {
        use ClientInviteState as I;
        use ClientNonInviteState as N;
        let udp = unreliable(self.transport);
        let drop = Received { ack: false, deliver: None };
        match self.state {
            ClientState::Invite(s @ (I::Calling | I::Proceeding)) => {
                self.timers.stop(Timer::A);
                if status < 200 {
                    // A ringing INVITE waits for its final as long as the call does.
                    if s == I::Calling {
                        self.timers.stop(Timer::B);
                    }
                    self.state = ClientState::Invite(I::Proceeding);
                    return Received { ack: false, deliver: Some(false) };
                }
                self.timers.stop(Timer::B);
                if status < 300 {
                    self.state = ClientState::Invite(I::Accepted);
                    self.timers.set(Timer::M, now + T64);
                    Received { ack: false, deliver: Some(true) }
                } else {
                    self.state = ClientState::Invite(I::Completed);
                    self.timers.set(Timer::D, now + if udp { TIMER_D } else { Duration::ZERO });
                    Received { ack: true, deliver: Some(true) }
                }
            }
            ClientState::Invite(I::Accepted) if (200..300).contains(&status) => Received { ack: false, deliver: Some(false) },
            ClientState::Invite(I::Completed) if status >= 300 => Received { ack: true, deliver: None },
            ClientState::NonInvite(N::Trying | N::Proceeding) => {
                if status < 200 {
                    self.state = ClientState::NonInvite(N::Proceeding);
                    return Received { ack: false, deliver: Some(false) };
                }
                self.state = ClientState::NonInvite(N::Completed);
                self.timers.stop(Timer::E);
                self.timers.stop(Timer::F);
                self.timers.set(Timer::K, now + if udp { T4 } else { Duration::ZERO });
                Received { ack: false, deliver: Some(true) }
            }
            _ => drop,
        }
    }

    /// We CANCELled this INVITE: if the callee is ringing, give up on its final 64·T1 from now
    /// (RFC 3261 §9.1), so a callee that never answers the CANCEL is not waited for forever.
    pub(super) fn cancelled(&mut self, now: Instant) {
        if self.state == ClientState::Invite(ClientInviteState::Proceeding) {
            self.timers.set(Timer::B, now + T64);
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    pub(super) fn is_terminated(&self) -> bool {
        matches!(
            self.state,
            ClientState::Invite(ClientInviteState::Terminated) | ClientState::NonInvite(ClientNonInviteState::Terminated)
        )
    }

    /// Fire every timer due at `now`.
    pub(super) fn on_timeout(&mut self, now: Instant) -> Vec<ClientTimeout> {
        use ClientInviteState as I;
        use ClientNonInviteState as N;
        let mut out = vec![];
        while let Some(t) = self.timers.pop_expired(now) {
            match (t, self.state) {
                (Timer::A, ClientState::Invite(I::Calling)) => {
                    out.push(ClientTimeout::Retransmit(self.data.clone()));
                    self.interval *= 2;
                    self.timers.set(Timer::A, now + self.interval);
                }
                (Timer::E, ClientState::NonInvite(s @ (N::Trying | N::Proceeding))) => {
                    out.push(ClientTimeout::Retransmit(self.data.clone()));
                    self.interval = if s == N::Trying { (self.interval * 2).min(T2) } else { T2 };
                    self.timers.set(Timer::E, now + self.interval);
                }
                (Timer::B, ClientState::Invite(I::Calling | I::Proceeding))
                | (Timer::F, ClientState::NonInvite(N::Trying | N::Proceeding)) => {
                    self.terminate();
                    out.push(ClientTimeout::TimedOut);
                }
                (Timer::D, ClientState::Invite(I::Completed))
                | (Timer::M, ClientState::Invite(I::Accepted))
                | (Timer::K, ClientState::NonInvite(N::Completed)) => self.terminate(),
                _ => {}
            }
        }
        out
    }

    fn terminate(&mut self) {
        self.state = match self.state {
            ClientState::Invite(_) => ClientState::Invite(ClientInviteState::Terminated),
            ClientState::NonInvite(_) => ClientState::NonInvite(ClientNonInviteState::Terminated),
        };
        self.timers = TimerTable::default();
    }
}

impl super::timers::Timed for ServerTx {
    fn next_timeout(&self) -> Option<Instant> {
        ServerTx::next_timeout(self)
    }
    fn order(&self) -> u64 {
        self.order
    }
}

impl super::timers::Timed for ClientTx {
    fn next_timeout(&self) -> Option<Instant> {
        ClientTx::next_timeout(self)
    }
    fn order(&self) -> u64 {
        self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_sip::{Method, Uri};

    fn addr() -> SocketAddr {
        "192.168.1.60:5060".parse().unwrap()
    }

    fn request(method: Method) -> Request {
        Request::new(method, Uri::parse("sip:1002@192.168.1.60:5060").unwrap())
    }

    fn client(now: Instant, method: Method, transport: Transport) -> ClientTx {
        ClientTx::new(now, request(method), addr(), transport, ClientOwner::Fire, 1)
    }

    /// Advance in 250 ms steps until `until`, collecting the ms (from `start`) of each event.
    fn run_client(tx: &mut ClientTx, start: Instant, until: Duration) -> Vec<(u64, ClientTimeout)> {
        let mut out = vec![];
        let mut t = start;
        while t - start < until {
            t += Duration::from_millis(250);
            for ev in tx.on_timeout(t) {
                out.push(((t - start).as_millis() as u64, ev));
            }
        }
        out
    }

    #[test]
    fn timer_table_yields_the_earliest_deadline_and_pops_ending_timers_before_retransmissions() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::G, now + T64);
        t.set(Timer::H, now + T64);
        t.set(Timer::L, now + T1);
        assert_eq!(t.next_timeout(), Some(now + T1));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.pop_expired(now + T64), Some(Timer::L));
        assert_eq!(t.pop_expired(now + T64), Some(Timer::H));
        assert_eq!(t.pop_expired(now + T64), Some(Timer::G));
        assert_eq!(t.pop_expired(now + T64), None);
    }

    #[test]
    fn client_invite_calling_retransmits_on_timer_a_doubling_then_times_out_on_timer_b() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Udp);
        assert_eq!(tx.state, ClientState::Invite(ClientInviteState::Calling));
        let evs = run_client(&mut tx, now, T64);
        let at: Vec<u64> = evs.iter().filter(|(_, e)| matches!(e, ClientTimeout::Retransmit(_))).map(|(t, _)| *t).collect();
        assert_eq!(at, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(evs.last().unwrap(), &(32000, ClientTimeout::TimedOut));
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_over_tcp_is_not_retransmitted() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Tcp);
        assert_eq!(run_client(&mut tx, now, T64), vec![(32000, ClientTimeout::TimedOut)]);
    }

    #[test]
    fn client_invite_provisional_moves_to_proceeding_and_stops_timers_a_and_b() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Udp);
        assert_eq!(tx.on_response(now, 180), Received { ack: false, deliver: Some(false) });
        assert_eq!(tx.state, ClientState::Invite(ClientInviteState::Proceeding));
        assert_eq!(tx.next_timeout(), None);
        assert!(run_client(&mut tx, now, T64 * 3).is_empty());
    }

    #[test]
    fn client_invite_cancelled_while_proceeding_gives_up_64_t1_later() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Udp);
        tx.on_response(now, 180);
        tx.cancelled(now);
        assert_eq!(run_client(&mut tx, now, T64), vec![(32000, ClientTimeout::TimedOut)]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_non_2xx_final_is_acked_each_time_delivered_once_and_completed_until_timer_d() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Udp);
        assert_eq!(tx.on_response(now, 486), Received { ack: true, deliver: Some(true) });
        assert_eq!(tx.state, ClientState::Invite(ClientInviteState::Completed));
        assert_eq!(tx.on_response(now, 486), Received { ack: true, deliver: None });
        assert!(run_client(&mut tx, now, TIMER_D).is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_2xx_is_accepted_and_its_retransmissions_still_reach_the_core_until_timer_m() {
        let now = Instant::now();
        let mut tx = client(now, Method::Invite, Transport::Udp);
        assert_eq!(tx.on_response(now, 200), Received { ack: false, deliver: Some(true) });
        assert_eq!(tx.state, ClientState::Invite(ClientInviteState::Accepted));
        assert_eq!(tx.on_response(now, 200), Received { ack: false, deliver: Some(false) });
        assert_eq!(tx.on_response(now, 180), Received { ack: false, deliver: None });
        tx.on_timeout(now + T64);
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_non_invite_retransmits_on_timer_e_capped_at_t2_and_times_out_on_timer_f() {
        let now = Instant::now();
        let mut tx = client(now, Method::Bye, Transport::Udp);
        assert_eq!(tx.state, ClientState::NonInvite(ClientNonInviteState::Trying));
        let evs = run_client(&mut tx, now, T64);
        let at: Vec<u64> = evs.iter().filter(|(_, e)| matches!(e, ClientTimeout::Retransmit(_))).map(|(t, _)| *t).collect();
        assert_eq!(at, vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
        assert_eq!(evs.last().unwrap(), &(32000, ClientTimeout::TimedOut));
    }

    #[test]
    fn client_non_invite_proceeding_retransmits_every_t2_and_a_final_completes_it_until_timer_k() {
        let now = Instant::now();
        let mut tx = client(now, Method::Bye, Transport::Udp);
        tx.on_response(now, 100);
        assert_eq!(tx.state, ClientState::NonInvite(ClientNonInviteState::Proceeding));
        tx.on_timeout(now + T1);
        assert_eq!(tx.next_timeout(), Some(now + T1 + T2));
        assert_eq!(tx.on_response(now + T1, 200), Received { ack: false, deliver: Some(true) });
        assert_eq!(tx.state, ClientState::NonInvite(ClientNonInviteState::Completed));
        assert_eq!(tx.on_response(now + T1, 200), Received { ack: false, deliver: None });
        assert_eq!(tx.next_timeout(), Some(now + T1 + T4));
        assert!(tx.on_timeout(now + T1 + T4).is_empty());
        assert!(tx.is_terminated());
    }

    fn server(invite: bool, transport: Transport) -> ServerTx {
        ServerTx::new(invite, addr(), transport, 1)
    }

    /// Advance in 250 ms steps until `until`, collecting the ms of each event.
    fn run_server(tx: &mut ServerTx, start: Instant, until: Duration) -> Vec<(u64, ServerTimeout)> {
        let mut out = vec![];
        let mut t = start;
        while t - start < until {
            t += Duration::from_millis(250);
            for ev in tx.on_timeout(t) {
                out.push(((t - start).as_millis() as u64, ev));
            }
        }
        out
    }

    #[test]
    fn server_invite_proceeding_keeps_its_last_provisional_for_retransmitted_invites_and_has_no_timer() {
        let now = Instant::now();
        let mut tx = server(true, Transport::Udp);
        assert_eq!(tx.last_response(), None);
        tx.on_send(now, 100, b"100".to_vec());
        tx.on_send(now, 180, b"180".to_vec());
        assert_eq!(tx.state, ServerState::Invite(ServerInviteState::Proceeding));
        assert_eq!(tx.last_response(), Some(&b"180"[..]));
        assert_eq!(tx.next_timeout(), None);
    }

    #[test]
    fn server_invite_non_2xx_final_repeats_on_timer_g_until_the_ack_then_absorbs_acks_until_timer_i() {
        let now = Instant::now();
        let mut tx = server(true, Transport::Udp);
        tx.on_send(now, 480, b"480".to_vec());
        assert_eq!(tx.state, ServerState::Invite(ServerInviteState::Completed));
        let evs = run_server(&mut tx, now, Duration::from_millis(1500));
        assert_eq!(evs.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![500, 1500]);
        // A later answer does not replace the final.
        tx.on_send(now, 200, b"200".to_vec());
        assert_eq!(tx.last_response(), Some(&b"480"[..]));
        assert!(tx.on_ack(now + T1 * 3));
        assert_eq!(tx.state, ServerState::Invite(ServerInviteState::Confirmed));
        assert!(tx.on_ack(now + T1 * 3), "a retransmitted ACK is absorbed too");
        assert!(tx.on_timeout(now + T1 * 3 + T4).is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_non_2xx_final_never_acked_ends_on_timer_h() {
        let now = Instant::now();
        let mut tx = server(true, Transport::Udp);
        tx.on_send(now, 486, b"486".to_vec());
        let evs = run_server(&mut tx, now, T64);
        let at: Vec<u64> = evs.iter().map(|(t, _)| *t).collect();
        assert_eq!(at, vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_2xx_is_repeated_on_timer_g_and_a_missing_ack_is_reported_on_timer_h() {
        let now = Instant::now();
        let mut tx = server(true, Transport::Udp);
        tx.on_send(now, 200, b"200".to_vec());
        assert_eq!(tx.state, ServerState::Invite(ServerInviteState::Accepted));
        assert!(!tx.on_ack(now), "the ACK of a 2xx is the core's");
        let evs = run_server(&mut tx, now, T64);
        let (last, rest) = evs.split_last().unwrap();
        assert_eq!(last, &(32000, ServerTimeout::NoAck));
        assert_eq!(rest.last().unwrap().0, 31500);
        assert!(tx.is_terminated(), "timer L is due with H");
    }

    #[test]
    fn server_invite_2xx_acked_stops_repeating_but_absorbs_retransmitted_invites_until_timer_l() {
        let now = Instant::now();
        let mut tx = server(true, Transport::Tcp);
        tx.on_send(now, 200, b"200".to_vec());
        tx.stop_2xx();
        assert_eq!(tx.next_timeout(), Some(now + T64));
        assert_eq!(tx.last_response(), Some(&b"200"[..]));
        assert!(run_server(&mut tx, now, T64).is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_non_invite_final_completes_it_until_timer_j_over_udp_and_at_once_over_tcp() {
        let now = Instant::now();
        let mut tx = server(false, Transport::Udp);
        assert_eq!(tx.state, ServerState::NonInvite(ServerNonInviteState::Trying));
        tx.on_send(now, 100, b"100".to_vec());
        assert_eq!(tx.state, ServerState::NonInvite(ServerNonInviteState::Proceeding));
        tx.on_send(now, 200, b"200".to_vec());
        assert_eq!(tx.state, ServerState::NonInvite(ServerNonInviteState::Completed));
        assert_eq!(tx.next_timeout(), Some(now + T64));
        tx.on_timeout(now + T64);
        assert!(tx.is_terminated());

        let mut tcp = server(false, Transport::Tcp);
        tcp.on_send(now, 200, b"200".to_vec());
        tcp.on_timeout(now);
        assert!(tcp.is_terminated());
    }
}

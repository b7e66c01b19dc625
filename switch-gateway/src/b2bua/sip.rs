//! SIP in and out: request checks and dispatch, server and client transactions around the
//! state machines of `transaction.rs`, and their timers.

use super::dialog::DialogRequest;
use super::transaction::{ClientTimeout, ServerTimeout};
use super::*;

impl Core {
    // ============================================================ SIP requests

    pub(super) fn on_request(&mut self, now: Instant, src: SocketAddr, transport: Transport, req: Request) {
        // A blocked source is ignored (the driver drops it before parsing; this is the backstop).
        if self.guard.is_blocked(now, src.ip()) {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
            return;
        }
        let Ok(via) = req.top_via_ref() else { return };
        let sent_by = format!("{}:{}", host_str(&via.host), via.port.unwrap_or(5060));
        let branch = match via.branch() {
            Some(b) if via.is_rfc3261_branch() => b.to_string(),
            // RFC 2543 peers: identify the transaction by what they do send.
            _ => format!(
                "2543-{}-{}-{}",
                req.call_id().unwrap_or(""),
                req.cseq().map(|c| c.seq).unwrap_or(0),
                req.from_ref().ok().and_then(|f| f.tag()).unwrap_or_default()
            ),
        };
        let method = match &req.method {
            Method::Ack => "INVITE".to_string(),
            m => m.as_str().to_string(),
        };
        let key = ServerKey { branch, sent_by, method };

        if req.method == Method::Ack {
            // The ACK of our non-2xx final is the transaction's; that of a 2xx is the call's.
            if self.server_txs.get_mut(&key).is_some_and(|mut tx| tx.on_ack(now)) {
                return;
            }
            self.on_ack_2xx(now, &req);
            return;
        }
        if let Some(tx) = self.server_txs.get(&key) {
            // A retransmission: repeat our last answer, if any.
            if let Some(data) = tx.last_response() {
                self.out.push_back(Output::Sip { to: src, transport, data: data.to_vec() });
            }
            return;
        }
        if let Some(data) = self.answered.get(now, &key) {
            // A retransmission of a request answered already (a REGISTER, a retired
            // transaction's): the same answer again; nothing for an ACKed INVITE's.
            if !data.is_empty() {
                self.out.push_back(Output::Sip { to: src, transport, data: data.to_vec() });
            }
            return;
        }

        // RFC 3261 §8.2: checks every UAS makes before looking at the method. These answers,
        // like every answer that needs no authentication and changes nothing (challenges, 403,
        // OPTIONS, 405, 481), are sent without a server transaction: a retransmission gets the
        // same answer again, and a flood of them costs no memory.
        if !matches!(req.uri.scheme, Scheme::Sip | Scheme::Sips) {
            return self.reply_unauthenticated(now, src, transport, &req, 416, "Unsupported URI Scheme", |_| {});
        }
        if let Ok(Some(0)) = req.max_forwards()
            && req.method != Method::Options
        {
            return self.reply_unauthenticated(now, src, transport, &req, 483, "Too Many Hops", |_| {});
        }
        if let Some(req_ext) = req.headers.get("Require")
            && req.method != Method::Cancel
        {
            let unsupported: Vec<&str> = req_ext.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
            if !unsupported.is_empty() {
                let list = unsupported.join(", ");
                return self.reply_unauthenticated(now, src, transport, &req, 420, "Bad Extension", |r| {
                    r.headers.push("Unsupported", list)
                });
            }
        }
        if !req.body.is_empty()
            && let Ok(Some(ct)) = req.content_type()
            && !ct.trim().to_ascii_lowercase().starts_with("application/sdp")
            && req.method == Method::Invite
        {
            return self.reply_unauthenticated(now, src, transport, &req, 415, "Unsupported Media Type", |r| {
                r.headers.push("Accept", "application/sdp")
            });
        }

        // Parsed only where it decides (a REGISTER never needs it).
        let in_dialog = |req: &Request| req.to_ref().is_ok_and(|t| t.tag().is_some());
        match req.method {
            Method::Register => self.on_register(now, &key, src, transport, &req),
            Method::Invite if !in_dialog(&req) => self.on_invite(now, &key, src, transport, req),
            Method::Cancel => {
                let invite_key = ServerKey { method: "INVITE".into(), ..key.clone() };
                if self.server_txs.get(&invite_key).and_then(|t| t.call).is_none() {
                    return self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {});
                }
                if self.open_tx(&key, &req, src, transport) {
                    self.on_cancel(now, &key, &req);
                }
            }
            Method::Options if !in_dialog(&req) => self.reply_unauthenticated(now, src, transport, &req, 200, "OK", |r| {
                r.headers.push("Allow", ALLOW);
                r.headers.push("Accept", "application/sdp");
            }),
            _ if in_dialog(&req) => {
                let cid = req.call_id().unwrap_or("");
                if !self.by_a.contains_key(cid) && !self.by_b.contains_key(cid) {
                    return self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {});
                }
                if self.open_tx(&key, &req, src, transport) {
                    self.on_in_dialog(now, &key, src, transport, req);
                }
            }
            Method::Bye => self.reply_unauthenticated(now, src, transport, &req, 481, "Call/Transaction Does Not Exist", |_| {}),
            _ => self
                .reply_unauthenticated(now, src, transport, &req, 405, "Method Not Allowed", |r| r.headers.push("Allow", ALLOW)),
        }
    }

    /// Open server transaction `key` for a request we will act on. At the table's cap, the
    /// request gets a stateless 503 instead (and `false`).
    pub(super) fn open_tx(&mut self, key: &ServerKey, req: &Request, src: SocketAddr, transport: Transport) -> bool {
        if self.server_txs.len() >= self.cfg.guard.max_server_transactions {
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "transactions_full").increment(1);
            tracing::warn!(%src, limit = self.cfg.guard.max_server_transactions, "server transaction table full: 503");
            self.reply_stateless(src, transport, req, 503, "Service Unavailable", |r| r.headers.push("Retry-After", "5"));
            return false;
        }
        self.seq += 1;
        self.server_txs.insert(key.clone(), ServerTx::new(req.method == Method::Invite, src, transport, self.seq));
        true
    }

    /// Our response to `req`: a To tag of ours on anything above 100 that has none, the Server
    /// header, then `edit`.
    fn response(&mut self, req: &Request, status: u16, reason: &str, edit: impl FnOnce(&mut Response)) -> Response {
        let mut r = Response::to_request(req, status, reason);
        if status > 100 {
            // The request's To, copied: tagged only if it has no tag (a tag drawn only then).
            let rng = &mut self.rng;
            r.set_to_tag_with(|| new_tag(rng));
        }
        r.headers.push("Server", "Trunkline");
        edit(&mut r);
        r
    }

    /// Answer without a server transaction.
    pub(super) fn reply_stateless(
        &mut self,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        let r = self.response(req, status, reason, edit);
        self.out.push_back(Output::Sip { to: src, transport, data: r.to_bytes() });
    }

    /// Answer without a server transaction but remember the answer, so a retransmission of the
    /// request gets the same bytes (REGISTER: see [`Answered`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_remembered(
        &mut self,
        now: Instant,
        key: &ServerKey,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        let r = self.response(req, status, reason, edit);
        let data = r.to_bytes();
        if transport == Transport::Udp {
            self.answered.insert(now, key.clone(), data.clone());
        }
        self.out.push_back(Output::Sip { to: src, transport, data });
    }

    /// Send a response within server transaction `key`.
    pub(super) fn reply(
        &mut self,
        now: Instant,
        key: &ServerKey,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        let r = self.response(req, status, reason, edit);
        self.send_response(now, key, r);
    }

    pub(super) fn send_response(&mut self, now: Instant, key: &ServerKey, r: Response) {
        let Some(mut tx) = self.server_txs.get_mut(key) else { return };
        let data = r.to_bytes();
        self.out.push_back(Output::Sip { to: tx.to, transport: tx.transport, data: data.clone() });
        tx.on_send(now, r.status, data);
        drop(tx);
        self.retire_tx(now, key);
    }

    /// Take a server transaction that now only lingers for retransmissions (a non-INVITE's
    /// final answer sent; an INVITE's 2xx ACKed or its call over) out of the table that
    /// `max_server_transactions` caps, into the bounded [`Answered`] table: otherwise every
    /// ended call held two entries for 64·T1 (its INVITE by timer L, its BYE by timer J) and
    /// the cap throttled a busy site's call rate, not just a flood.
    pub(super) fn retire_tx(&mut self, now: Instant, key: &ServerKey) {
        let Some(tx) = self.server_txs.get(key) else { return };
        if !tx.lingers_only() {
            return;
        }
        // Over TCP nothing is retransmitted; an ACKed INVITE's repeat is absorbed silently.
        let keep = match tx.last_response() {
            _ if !super::transaction::unreliable(tx.transport) => None,
            Some(data) if !matches!(tx.state, super::transaction::ServerState::Invite(_)) => Some(data.to_vec()),
            _ => Some(Vec::new()),
        };
        self.server_txs.remove(key);
        if let Some(data) = keep {
            self.answered.insert(now, key.clone(), data);
        }
    }

    /// Send `r` to leg A's caller at `src`: within its INVITE transaction `key` while that
    /// lives, else as it is.
    pub(super) fn send_to_a(&mut self, now: Instant, key: &ServerKey, src: SocketAddr, transport: Transport, r: Response) {
        if self.server_txs.contains_key(key) {
            self.send_response(now, key, r);
        } else {
            self.out.push_back(Output::Sip { to: src, transport, data: r.to_bytes() });
        }
    }

    // ============================================================ SIP responses (our forks)

    pub(super) fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.top_via_ref().ok().and_then(|v| v.branch().map(str::to_string)) else { return };
        // A CANCEL shares its INVITE's branch: tell them apart by the CSeq method.
        let branch = match resp.cseq() {
            Ok(c) if c.method == Method::Cancel => format!("{branch}-cancel"),
            _ => branch,
        };
        let Some(mut tx) = self.client_txs.get_mut(&branch) else { return };
        let received = tx.on_response(now, resp.status);
        if received.ack
            && let Some(req) = &tx.request
        {
            // A non-2xx final to our INVITE is ACKed in its transaction, each time it comes.
            let ack = DialogRequest::ack_non_2xx(req, &resp).build(Method::Ack);
            self.out.push_back(Output::Sip { to: tx.to, transport: tx.transport, data: ack.to_bytes() });
        }
        let Some(first_final) = received.deliver else { return };
        let owner = match &tx.owner {
            ClientOwner::Fork { call, fork } => Some((*call, *fork)),
            ClientOwner::Fire => None,
        };
        drop(tx);
        if let Some((call, fork)) = owner {
            self.fork_response(now, call, fork, &branch, resp, first_final);
        }
    }

    // ============================================================ client transactions + timers

    pub(super) fn send_client(
        &mut self,
        now: Instant,
        key: String,
        req: Request,
        to: SocketAddr,
        transport: Transport,
        owner: ClientOwner,
    ) {
        self.seq += 1;
        let tx = ClientTx::new(now, req, to, transport, owner, self.seq);
        self.out.push_back(Output::Sip { to, transport, data: tx.data().to_vec() });
        self.client_txs.insert(key, tx);
    }

    pub(super) fn set_call_timer(&mut self, now: Instant, id: u64, after: Duration, which: CallTimer) {
        self.seq += 1;
        let order = self.seq;
        if let Some(c) = self.calls.get_mut(&id) {
            c.deadline = Some(CallDeadline { at: now + after, which, order });
            self.call_deadlines.push(now + after, order, id);
        }
    }

    pub(super) fn cancel_timer(&mut self, id: u64) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.deadline = None;
        }
    }

    /// Fire every transaction and call timer due at `now`: earliest first, ties in the order
    /// they were set (so a run is the same every time), until none is due.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        loop {
            let calls = &self.calls;
            let call_current = |id: &u64| calls.get(id).and_then(|c| c.deadline.map(|d| (d.at, d.order)));
            let candidates = [
                self.server_txs.peek_due(now).map(|d| (d, 0)),
                self.client_txs.peek_due(now).map(|d| (d, 1)),
                self.call_deadlines.peek_due(now, call_current).map(|d| (d, 2)),
            ];
            let Some((_, which)) = candidates.into_iter().flatten().min() else { return };
            match which {
                0 => {
                    if let Some(key) = self.server_txs.pop_due() {
                        self.server_timeout(now, &key);
                    }
                }
                1 => {
                    if let Some(key) = self.client_txs.pop_due() {
                        self.client_timeout(now, &key);
                    }
                }
                _ => {
                    if let Some(id) = self.call_deadlines.pop() {
                        self.call_timeout(now, id);
                    }
                }
            }
        }
    }

    fn server_timeout(&mut self, now: Instant, key: &ServerKey) {
        let Some(mut tx) = self.server_txs.get_mut(key) else { return };
        let events = tx.on_timeout(now);
        let (to, transport, call, done) = (tx.to, tx.transport, tx.call, tx.is_terminated());
        drop(tx);
        if done {
            self.server_txs.remove(key);
        }
        for ev in events {
            match ev {
                ServerTimeout::Retransmit(data) => self.out.push_back(Output::Sip { to, transport, data }),
                ServerTimeout::NoAck => {
                    if let Some(id) = call
                        && self.calls.get(&id).is_some_and(|c| c.state == CallState::Answered)
                    {
                        // RFC 3261 §13.3.1.4: no ACK 64·T1 after our 2xx; the dialog is
                        // confirmed and at once ended (BYE), on both legs.
                        tracing::warn!(call = id, "no ACK for our 200 OK: hanging up");
                        self.hangup(now, id, true, true);
                    }
                }
            }
        }
    }

    fn client_timeout(&mut self, now: Instant, key: &str) {
        let Some(mut tx) = self.client_txs.get_mut(key) else { return };
        let events = tx.on_timeout(now);
        let (to, transport, done) = (tx.to, tx.transport, tx.is_terminated());
        let owner = match tx.owner {
            ClientOwner::Fork { call, fork } => Some((call, fork)),
            ClientOwner::Fire => None,
        };
        drop(tx);
        if done {
            self.client_txs.remove(key);
        }
        for ev in events {
            match ev {
                ClientTimeout::Retransmit(data) => self.out.push_back(Output::Sip { to, transport, data }),
                // Timer B: as a 408 from that contact.
                ClientTimeout::TimedOut => {
                    if let Some((call, fork)) = owner
                        && let Some(c) = self.calls.get_mut(&call)
                        && let Some(f) = c.forks.get_mut(fork)
                        && matches!(f.state, ForkState::Trying | ForkState::Ringing)
                    {
                        f.state = ForkState::Failed(408);
                        let all_done = c.forks.iter().all(|f| matches!(f.state, ForkState::Failed(_) | ForkState::Cancelled));
                        if all_done && c.winner.is_none() {
                            self.fail_call(now, call, Failure::NoAnswer(Some("the callee's phone did not respond")));
                        }
                    }
                }
            }
        }
    }

    fn call_timeout(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(d) = call.deadline.filter(|d| d.at <= now) else { return };
        call.deadline = None;
        match d.which {
            CallTimer::Ring if call.state == CallState::Ringing => self.fail_call(now, id, Failure::NoAnswer(Some("no answer"))),
            CallTimer::Route if call.state == CallState::Routing => {
                self.fail_call(now, id, Failure::Unavailable("the cloud did not answer in time".into()))
            }
            _ => {}
        }
    }
}

/// The answers to recent REGISTERs and retired transactions (UDP), for their retransmissions
/// (RFC 3261 §17.2.2 timer J's job, RFC 6026 timer L's) without a server transaction each: a
/// registration storm (a site's phones after a power cut) or a busy site's ended calls must not
/// fill the transaction table that new INVITEs need, nor cost a timer each. An empty answer
/// means "absorb" (a repeated INVITE whose 2xx was ACKed).
/// Kept for timer J (64·T1) or until [`ANSWERED_MAX`] newer ones; an answer forgotten early only
/// means a very late retransmission is handled as a new request (a fresh challenge, as its
/// nonce-count was used).
#[derive(Default)]
pub(super) struct Answered {
    by_key: HashMap<ServerKey, Vec<u8>>,
    order: VecDeque<(Instant, ServerKey)>,
}

/// How many answers are kept at most (a few hundred bytes each).
const ANSWERED_MAX: usize = 20_000;

impl Answered {
    pub(super) fn insert(&mut self, now: Instant, key: ServerKey, data: Vec<u8>) {
        self.expire(now);
        while self.order.len() >= ANSWERED_MAX {
            if let Some((_, old)) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
        if self.by_key.insert(key.clone(), data).is_none() {
            self.order.push_back((now + super::transaction::T64, key));
        }
    }

    pub(super) fn get(&mut self, now: Instant, key: &ServerKey) -> Option<&[u8]> {
        self.expire(now);
        self.by_key.get(key).map(Vec::as_slice)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && *at <= now
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

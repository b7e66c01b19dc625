//! Inside dialogs: requests from either side of a call (BYE, re-INVITE, UPDATE, ...), the ACK of
//! our 2xx, and every in-dialog request we send, built by one builder.

use super::*;

impl Core {
    pub(super) fn on_ack_2xx(&mut self, now: Instant, req: &Request) {
        let Some(id) = req.call_id().ok().and_then(|c| self.by_a.get(c)).copied() else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.state == CallState::Answered {
            call.state = CallState::Connected;
            call.connected_at.get_or_insert(now);
            tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "call connected");
            if let Some(a) = call.a.sip() {
                let key = a.tx.clone();
                if let Some(mut tx) = self.server_txs.get_mut(&key) {
                    tx.stop_2xx();
                }
                self.retire_tx(now, &key);
            }
        }
    }

    /// Requests inside a dialog of a call, from either side.
    pub(super) fn on_in_dialog(&mut self, now: Instant, key: &ServerKey, _src: SocketAddr, _transport: Transport, req: Request) {
        let cid = req.call_id().unwrap_or("").to_string();
        let (id, side) = if let Some(id) = self.by_a.get(&cid) {
            (*id, Side::A)
        } else if let Some((id, fi)) = self.by_b.get(&cid) {
            (*id, Side::B(*fi))
        } else {
            return self.reply(now, key, &req, 481, "Call/Transaction Does Not Exist", |_| {});
        };
        if let Side::B(fi) = side
            && !self.calls.get(&id).is_some_and(|c| c.fork_dialog_live(fi))
        {
            // A contact that lost the race (cancelled, failed, or answered after another and
            // hung up by us): its dialog is over and the call is not its to end. Its BYE may
            // cross ours; nothing else is for us.
            return match req.method {
                Method::Bye => self.reply(now, key, &req, 200, "OK", |_| {}),
                _ => self.reply(now, key, &req, 481, "Call/Transaction Does Not Exist", |_| {}),
            };
        }
        match req.method {
            Method::Bye => {
                self.reply(now, key, &req, 200, "OK", |_| {});
                let from_a = side == Side::A;
                tracing::info!(call = id, from_caller = from_a, "hang-up");
                self.hangup(now, id, !from_a, from_a);
            }
            Method::Invite | Method::Update => self.on_session_update(now, key, id, side, req),
            Method::Info | Method::Options => self.reply(now, key, &req, 200, "OK", |_| {}),
            // RFC 3261 §8.2.1: a method we do not implement (REFER, NOTIFY, …), even in a dialog.
            _ => self.reply(now, key, &req, 405, "Method Not Allowed", |r| r.headers.push("Allow", ALLOW)),
        }
    }

    /// A re-INVITE (RFC 3261 §14) or an UPDATE (RFC 3311) from one side of an established call:
    /// a hold, a codec change, a session refresh. Media goes through our relay or bridge, which
    /// does not change, so the answer is the SDP we last gave that side, re-versioned (RFC 3264
    /// §8), its codecs narrowed to the offer's and its direction mirroring the offer's; an offer
    /// we cannot answer gets 488 and leaves the session as it was. The other side is not told.
    pub(super) fn on_session_update(&mut self, now: Instant, key: &ServerKey, id: u64, side: Side, req: Request) {
        let is_invite = req.method == Method::Invite;
        let Some(call) = self.calls.get_mut(&id) else { return };
        // Target refresh (RFC 3261 §12.2.2): a new Contact is where our next requests go.
        if let Some(target) = req.contacts_ref().ok().and_then(|c| c.iter().find_map(|c| c.name_addr().map(|n| n.uri.clone()))) {
            match side {
                Side::A => {
                    if let Some(a) = call.a.sip_mut() {
                        a.remote_target = target;
                    }
                }
                Side::B(fi) => {
                    if let Some(f) = call.forks.get_mut(fi) {
                        f.remote_target = Some(target);
                    }
                }
            }
        }
        let answered = matches!(call.state, CallState::Answered | CallState::Connected);
        let offer = (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned());
        if !is_invite && offer.is_none() {
            // An UPDATE without an offer (a session-timer refresh) needs no SDP in its answer.
            return self.reply(now, key, &req, 200, "OK", |_| {});
        }
        if !answered {
            // Early dialog: the first offer/answer is not done yet (RFC 3311 §5.2 / RFC 3261
            // §14.2): refuse, and say when to try again.
            let after = self.rng.random_range(1..=10u32);
            return self.reply(now, key, &req, 500, "Server Internal Error", |r| {
                r.headers.push("Retry-After", after.to_string());
                r.headers.push("Warning", warning("the call is not answered yet"));
            });
        }
        let Some(last) = call.sdp_sent(side) else {
            return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| {
                r.headers.push("Warning", warning("no session to modify"))
            });
        };
        let answer = match &offer {
            // A re-INVITE without an offer: ours goes in the 2xx, the answer comes in the ACK.
            None => trunkline_media::sdp::bump_version(&last).map_err(|e| e.to_string()),
            Some(offer) => answer_reoffer(&last, offer),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                tracing::info!(call = id, method = req.method.as_str(), %why, "mid-call offer refused; the session stays as it was");
                return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| r.headers.push("Warning", warning(&why)));
            }
        };
        // A phone that moved its media (new address or port): the relay sends there now.
        let moved = offer.as_deref().and_then(|o| trunkline_media::sdp::Sdp::parse(o).ok()).and_then(|s| s.audio_rtp_addr());
        if let (Some(addr), Some(pair)) = (moved.filter(|a| !a.ip().is_unspecified() && a.port() != 0), call.media) {
            let leg = if side == Side::A { MediaLeg::A } else { MediaLeg::B };
            self.out.push_back(Output::MediaRemote { id: pair.id, leg, addr });
        }
        call.set_sdp_sent(side, answer.clone());
        tracing::info!(call = id, method = req.method.as_str(), "mid-call offer answered");
        let contact = self.contact_str();
        self.reply(now, key, &req, 200, "OK", |r| {
            r.headers.push("Contact", contact);
            r.headers.push("Allow", ALLOW);
            r.set_body("application/sdp", answer.into_bytes());
        });
    }

    pub(super) fn cancel_fork(&mut self, now: Instant, id: u64, fi: usize) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fi];
        if !matches!(fork.state, ForkState::Trying | ForkState::Ringing) {
            return;
        }
        fork.state = ForkState::Cancelled;
        let c = DialogRequest::cancel(&fork.request).build(Method::Cancel);
        let (dest, tr) = (fork.dest, fork.transport);
        if let Some(mut tx) = self.client_txs.get_mut(&fork.branch) {
            tx.cancelled(now);
        }
        // A CANCEL shares the INVITE's branch but is its own transaction.
        let key = format!("{}-cancel", fork.branch);
        self.send_client(now, key, c, dest, tr, ClientOwner::Fire);
    }

    pub(super) fn bye_fork(&mut self, now: Instant, id: u64, fi: usize) {
        if !self.calls.contains_key(&id) {
            return;
        }
        let branch = new_branch(&mut self.rng);
        let (adv_ip, port) = (self.cfg.adv_ip, self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let fork = &mut call.forks[fi];
        fork.cseq += 1;
        let r = fork.dialog_request(via_str(fork.transport, adv_ip, port, &branch), fork.cseq).build(Method::Bye);
        let (dest, tr) = (fork.dest, fork.transport);
        self.send_client(now, branch, r, dest, tr, ClientOwner::Fire);
    }

    /// The ACK of fork `fi`'s 2xx: a request of its own in the dialog (RFC 3261 §13.2.2.4).
    pub(super) fn ack_2xx(&mut self, id: u64, fi: usize) -> Option<Output> {
        let via = self.via_ours(self.calls.get(&id)?.forks.get(fi)?.transport);
        let fork = self.calls.get(&id)?.forks.get(fi)?;
        let r = fork.dialog_request(via, 1).build(Method::Ack);
        Some(Output::Sip { to: fork.dest, transport: fork.transport, data: r.to_bytes() })
    }

    /// A 2xx for a call we no longer have: ACK it and BYE it so the phone stops ringing.
    pub(super) fn ack_and_bye_orphan(&mut self, now: Instant, branch: &str, resp: &Response, bye: bool) {
        let Some(tx) = self.client_txs.get(branch) else { return };
        let Some(req) = tx.request.clone() else { return };
        let (to_addr, tr) = (tx.to, tx.transport);
        let target = resp
            .contacts_ref()
            .ok()
            .and_then(|c| c.iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())))
            .unwrap_or_else(|| req.uri.clone());
        let methods: &[(Method, u32)] = if bye { &[(Method::Ack, 1), (Method::Bye, 2)] } else { &[(Method::Ack, 1)] };
        for (method, cseq) in methods.iter().cloned() {
            let b = new_branch(&mut self.rng);
            let dialog = DialogRequest {
                target: target.clone(),
                via: via_str(tr, self.cfg.adv_ip, self.cfg.sip_port, &b),
                from: header(&req.headers, "From"),
                to: header(&resp.headers, "To"),
                call_id: header(&req.headers, "Call-ID"),
                cseq,
            };
            let r = dialog.build(method.clone());
            if method == Method::Ack {
                self.out.push_back(Output::Sip { to: to_addr, transport: tr, data: r.to_bytes() });
            } else {
                self.send_client(now, b, r, to_addr, tr, ClientOwner::Fire);
            }
        }
    }

    /// Our Via with a fresh branch.
    fn via_ours(&mut self, transport: Transport) -> String {
        let branch = new_branch(&mut self.rng);
        self.via(transport, &branch)
    }
}

/// Every request we send inside a dialog, and the ACK and CANCEL of our INVITEs: the one place
/// they are built.
pub(super) struct DialogRequest {
    pub(super) target: Uri,
    /// Ours with a fresh branch, or the INVITE's own (the ACK of a non-2xx, a CANCEL).
    pub(super) via: String,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) call_id: String,
    pub(super) cseq: u32,
}

impl DialogRequest {
    pub(super) fn build(&self, method: Method) -> Request {
        let mut r = Request::new(method.clone(), self.target.clone());
        r.headers.push("Via", self.via.clone());
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", self.from.clone());
        r.headers.push("To", self.to.clone());
        r.headers.push("Call-ID", self.call_id.clone());
        r.set_cseq(&CSeq::new(self.cseq, method));
        r
    }

    /// The ACK of a non-2xx final to our `invite` (RFC 3261 §17.1.1.3): in its transaction
    /// (same Via, so the same branch), its CSeq number, the To of the response.
    pub(super) fn ack_non_2xx(invite: &Request, resp: &Response) -> DialogRequest {
        DialogRequest {
            target: invite.uri.clone(),
            via: header(&invite.headers, "Via"),
            from: header(&invite.headers, "From"),
            to: header(&resp.headers, "To"),
            call_id: header(&invite.headers, "Call-ID"),
            cseq: invite.cseq().map(|c| c.seq).unwrap_or(1),
        }
    }

    /// The CANCEL of our `invite` (RFC 3261 §9.1): its Request-URI, top Via, From, To, Call-ID
    /// and CSeq number.
    pub(super) fn cancel(invite: &Request) -> DialogRequest {
        DialogRequest {
            target: invite.uri.clone(),
            via: header(&invite.headers, "Via"),
            from: header(&invite.headers, "From"),
            to: header(&invite.headers, "To"),
            call_id: header(&invite.headers, "Call-ID"),
            cseq: invite.cseq().map(|c| c.seq).unwrap_or(1),
        }
    }
}

fn header(h: &trunkline_sip::Headers, name: &str) -> String {
    h.get(name).unwrap_or_default().to_string()
}

impl Fork {
    /// Our request in this fork's dialog: to the callee's Contact, with its To tag.
    fn dialog_request(&self, via: String, cseq: u32) -> DialogRequest {
        let target = self.remote_target.clone().unwrap_or_else(|| self.request.uri.clone());
        let mut to = self.request.to().unwrap_or_else(|_| NameAddr::new(self.request.uri.clone()));
        if let Some(t) = &self.to_tag {
            to.set_tag(t);
        }
        DialogRequest {
            target,
            via,
            from: header(&self.request.headers, "From"),
            to: to.to_string(),
            call_id: self.call_id.clone(),
            cseq,
        }
    }
}

impl ALeg {
    /// Our request in the caller's dialog: we are its callee, so From and To swap.
    pub(super) fn dialog_request(&self, via: String, cseq: u32) -> DialogRequest {
        let mut from = self.invite.to().unwrap_or_else(|_| NameAddr::new(self.invite.uri.clone()));
        from.set_tag(&self.our_tag);
        DialogRequest {
            target: self.remote_target.clone(),
            via,
            from: from.to_string(),
            to: header(&self.invite.headers, "From"),
            call_id: self.call_id.clone(),
            cseq,
        }
    }
}

impl Call {
    /// Whether fork `fi`'s dialog belongs to the call: the winner's, or any still ringing.
    pub(super) fn fork_dialog_live(&self, fi: usize) -> bool {
        match self.winner {
            Some(w) => w == fi,
            None => self.forks.get(fi).is_some_and(|f| matches!(f.state, ForkState::Trying | ForkState::Ringing)),
        }
    }

    /// The SDP we last gave `side` (our 2xx to the caller, our INVITE to the callee, or a later
    /// answer to a mid-call offer).
    pub(super) fn sdp_sent(&self, side: Side) -> Option<String> {
        match side {
            Side::A => self.sdp_to_a.clone(),
            Side::B(fi) => self.sdp_to_b.clone().or_else(|| {
                let f = self.forks.get(fi)?;
                (!f.request.body.is_empty()).then(|| String::from_utf8_lossy(&f.request.body).into_owned())
            }),
        }
    }

    pub(super) fn set_sdp_sent(&mut self, side: Side, sdp: String) {
        match side {
            Side::A => self.sdp_to_a = Some(sdp),
            Side::B(_) => self.sdp_to_b = Some(sdp),
        }
    }
}

/// Which side of a call a request came from: the caller's dialog, or fork `n`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    A,
    B(usize),
}

/// Our answer to a mid-call `offer`, from `last`, the SDP we gave that side before: the same
/// session (same `o=` origin, version + 1, same address and port), only the payload types the
/// offer has too, and the direction the offer's asks for (RFC 3264 §6.1, §8).
fn answer_reoffer(last: &str, offer: &str) -> Result<String, String> {
    use trunkline_media::sdp::Sdp;
    let offered = Sdp::parse(offer).map_err(|e| format!("unusable SDP offer: {e}"))?;
    let offered = offered.audio.ok_or("the offer has no audio")?;
    let ours = Sdp::parse(last).map_err(|e| e.to_string())?;
    let our_addr = ours.audio_rtp_addr().ok_or("no audio address in our session")?;
    let kept = trunkline_media::sdp::rewrite(last, our_addr.ip(), our_addr.port(), Some(&offered.payload_types))
        .map_err(|_| "none of the offered codecs is the call's".to_string())?;
    let directed = with_direction(&kept, offered.direction.reversed().as_str());
    trunkline_media::sdp::bump_version(&directed).map_err(|e| e.to_string())
}

/// `sdp` with its audio section's direction attribute set to `dir` (any other direction
/// attribute, at session or audio level, removed).
fn with_direction(sdp: &str, dir: &str) -> String {
    const DIRECTIONS: [&str; 4] = ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"];
    let mut out = String::with_capacity(sdp.len() + 16);
    let (mut seen_media, mut in_audio, mut pending) = (false, false, false);
    for line in sdp.lines() {
        if line.starts_with("m=") {
            if pending {
                out.push_str(&format!("a={dir}\r\n"));
            }
            seen_media = true;
            in_audio = line.starts_with("m=audio ");
            pending = in_audio;
        }
        if DIRECTIONS.contains(&line.trim_end()) && (!seen_media || in_audio) {
            continue;
        }
        out.push_str(line.trim_end_matches('\r'));
        out.push_str("\r\n");
    }
    if pending {
        out.push_str(&format!("a={dir}\r\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Request {
        let text = "INVITE sip:1002@192.168.1.60:5070 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKfork1;rport\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:1001@hq>;tag=ours\r\n\
            To: <sip:1002@hq>\r\n\
            Call-ID: c1@hq\r\n\
            CSeq: 7 INVITE\r\n\
            Contact: <sip:hq@10.0.0.1:5060>\r\n\
            Content-Length: 0\r\n\r\n";
        match trunkline_sip::parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn response(status: u16, to_tag: &str) -> Response {
        let mut r = Response::to_request(&invite(), status, "Busy Here");
        r.set_to_tag(to_tag);
        r
    }

    #[test]
    fn cancel_copies_the_invite_s_uri_top_via_from_to_call_id_and_cseq_number() {
        let inv = invite();
        let c = DialogRequest::cancel(&inv).build(Method::Cancel);
        assert_eq!(c.method, Method::Cancel);
        assert_eq!(c.uri, inv.uri);
        for h in ["Via", "From", "To", "Call-ID"] {
            assert_eq!(c.headers.get(h), inv.headers.get(h), "{h}");
        }
        let cseq = c.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (7, Method::Cancel));
        assert_eq!(c.headers.get("Max-Forwards"), Some("70"));
    }

    #[test]
    fn ack_of_a_non_2xx_stays_in_the_invite_transaction_with_the_response_s_to_tag() {
        let inv = invite();
        let ack = DialogRequest::ack_non_2xx(&inv, &response(486, "callee")).build(Method::Ack);
        assert_eq!(ack.uri, inv.uri, "RFC 3261 §17.1.1.3: the INVITE's Request-URI");
        assert_eq!(ack.headers.get("Via"), inv.headers.get("Via"), "the same branch: the same transaction");
        assert_eq!(ack.to().unwrap().tag(), Some("callee"));
        assert_eq!(ack.from().unwrap().tag(), Some("ours"));
        let cseq = ack.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (7, Method::Ack));
    }

    #[test]
    fn an_in_dialog_request_carries_exactly_the_dialog_s_identifiers() {
        let d = DialogRequest {
            target: "sip:1002@192.168.1.60:5070".parse().unwrap(),
            via: "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye".into(),
            from: "<sip:1001@hq>;tag=ours".into(),
            to: "<sip:1002@hq>;tag=callee".into(),
            call_id: "c1@hq".into(),
            cseq: 8,
        };
        let bye = d.build(Method::Bye);
        assert_eq!(bye.to().unwrap().tag(), Some("callee"));
        assert_eq!(bye.call_id().ok(), Some("c1@hq"));
        assert_eq!(bye.cseq().unwrap().seq, 8);
        let text = String::from_utf8(bye.to_bytes()).unwrap();
        assert!(text.starts_with("BYE sip:1002@192.168.1.60:5070 SIP/2.0\r\n"), "{text}");
        // It parses back as what it is.
        assert!(matches!(trunkline_sip::parse(text.as_bytes()), Ok(Message::Request(r)) if r.method == Method::Bye));
    }
}

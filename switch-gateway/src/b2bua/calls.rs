//! B2BUA calls: a phone's INVITE, forking to the callee's contacts, answering and failing the
//! caller, hanging up.

use super::*;

/// Why a call ends unanswered, decided where it fails: the SIP final a calling phone gets and
/// the outcome the cloud is told both follow from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The callee has no registered contact.
    CalleeOffline,
    Busy,
    Declined,
    /// Nobody answered (or the callee went away first), with why if we know.
    NoAnswer(Option<&'static str>),
    /// The caller gave up (CANCEL, or a direct caller left).
    Cancelled,
    /// The cloud says the number does not exist.
    NotFound(String),
    /// Media we cannot use (an SDP offer or answer, a bridge).
    NotAcceptable(String),
    /// Something we depend on is not there (the cloud, media ports, the callee's site).
    Unavailable(String),
    Internal(String),
    /// The cloud or the callee's site ended the attempt with this outcome.
    Remote(Outcome),
}

impl Failure {
    /// The final status a calling phone gets.
    pub(super) fn status(&self) -> (u16, &'static str) {
        match self {
            Failure::CalleeOffline | Failure::NoAnswer(_) => (480, "Temporarily Unavailable"),
            Failure::Busy => (486, "Busy Here"),
            Failure::Declined => (603, "Decline"),
            Failure::Cancelled => (487, "Request Terminated"),
            Failure::NotFound(_) => (404, "Not Found"),
            Failure::NotAcceptable(_) => (488, "Not Acceptable Here"),
            Failure::Unavailable(_) => (503, "Service Unavailable"),
            Failure::Internal(_) => (500, "Server Internal Error"),
            // "Connected" for a call that never was: nobody answered here.
            Failure::Remote(Outcome::Connected) => (480, "Temporarily Unavailable"),
            Failure::Remote(o) => o.sip_status(),
        }
    }

    /// The outcome reported to the cloud for calls we carry.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Failure::CalleeOffline => Outcome::CalleeOffline,
            Failure::Busy => Outcome::Busy,
            Failure::Declined => Outcome::Declined,
            Failure::NoAnswer(_) | Failure::Remote(Outcome::Connected) => Outcome::NoAnswer,
            Failure::Cancelled => Outcome::Cancelled,
            Failure::NotFound(_) => Outcome::RejectedInvalid,
            Failure::NotAcceptable(_) | Failure::Unavailable(_) | Failure::Internal(_) => Outcome::Error,
            Failure::Remote(o) => *o,
        }
    }

    /// The text for a Warning header, if any.
    pub(super) fn warning(&self) -> Option<&str> {
        match self {
            Failure::CalleeOffline => Some("the callee is not registered"),
            Failure::Busy | Failure::Declined | Failure::Cancelled => None,
            Failure::NoAnswer(why) => *why,
            Failure::NotFound(w) | Failure::NotAcceptable(w) | Failure::Unavailable(w) | Failure::Internal(w) => Some(w),
            Failure::Remote(o) => Some(cloud::outcome_text(*o)),
        }
    }
}

impl Core {
    // ------------------------------------------------------------ INVITE (new call from a phone)

    pub(super) fn on_invite(&mut self, now: Instant, key: &ServerKey, src: SocketAddr, transport: Transport, req: Request) {
        let caller = match self.authenticate(now, src, transport, &req, "INVITE") {
            Some(u) => u,
            None => return,
        };
        if !self.open_tx(key, &req, src, transport) {
            return;
        }
        let from_user = req.from_ref().ok().and_then(|f| f.uri.user.clone());
        if from_user.as_deref() != Some(caller.as_str()) {
            return self.reply(now, key, &req, 403, "Forbidden", |r| {
                r.headers.push("Warning", warning("From does not match the authenticated number"))
            });
        }
        let Some(callee) = req.uri.user.clone().filter(|u| trunkline_protocol::check_number("to", u).is_ok()) else {
            return self.reply(now, key, &req, 404, "Not Found", |r| {
                r.headers.push("Warning", warning("no dialable number in the Request-URI"))
            });
        };
        let Ok(call_id) = req.call_id().map(str::to_string) else { return };
        if self.by_a.contains_key(&call_id) {
            return self.reply(now, key, &req, 482, "Loop Detected", |_| {});
        }
        if callee == caller {
            return self.reply(now, key, &req, 404, "Not Found", |r| {
                r.headers.push("Warning", warning("you cannot call your own number"))
            });
        }
        if req.body.is_empty() {
            return self.reply(now, key, &req, 488, "Not Acceptable Here", |r| {
                r.headers.push("Warning", warning("an SDP offer is required"))
            });
        }
        let remote_target = req
            .contacts_ref()
            .ok()
            .and_then(|c| c.iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())))
            .unwrap_or_else(|| req.from_ref().map(|f| f.uri.clone()).unwrap_or_else(|_| req.uri.clone()));
        let id = self.next_call;
        self.next_call += 1;
        // 100 Trying at once so the phone stops retransmitting.
        self.reply(now, key, &req, 100, "Trying", |_| {});
        if let Some(mut tx) = self.server_txs.get_mut(key) {
            tx.call = Some(id);
        }
        let offer_sdp = String::from_utf8_lossy(&req.body).into_owned();
        let caller_name = req.from_ref().ok().and_then(|f| f.display.clone());
        self.calls.insert(
            id,
            Call {
                caller: caller.clone(),
                callee: callee.clone(),
                offer_sdp,
                caller_name,
                b_direct: None,
                b_remote: None,
                echo: None,
                a: CallerSide::Sip(ALeg {
                    src,
                    transport,
                    invite: req,
                    tx: key.clone(),
                    call_id: call_id.clone(),
                    our_tag: new_tag(&mut self.rng),
                    remote_target,
                    our_cseq: 1,
                    final_sent: false,
                }),
                forks: vec![],
                winner: None,
                media: None,
                state: CallState::Routing,
                cloud_id: None,
                ringing_sent: false,
                deadline: None,
                connected_at: None,
                sdp_to_a: None,
                sdp_to_b: None,
                started_ms: self.unix_ms(now),
            },
        );
        self.by_a.insert(call_id, id);

        if self.phones.contains(&callee) || self.is_echo(&callee) {
            tracing::info!(%caller, %callee, "F7: local call");
            self.ring_local(now, id, &callee);
        } else if !self.cloud_up {
            self.fail_call(now, id, Failure::Unavailable("the cloud is unreachable; only local numbers can be called".into()));
        } else {
            // A: via this switch → B1/B2: ask the cloud.
            let cloud_id = format!("{}-{}", self.cfg.switch_id, new_tag(&mut self.rng));
            self.step(&cloud_id, Step::B1, format!("desk phone {caller} calls {callee}, not a phone of this switch"));
            self.step(&cloud_id, Step::B2, "asking the cloud to validate the callee");
            self.by_cloud.insert(cloud_id.clone(), id);
            if let Some(c) = self.calls.get_mut(&id) {
                c.cloud_id = Some(cloud_id.clone());
            }
            self.cloud(ClientMsg::RouteQuery { call_id: cloud_id, from: caller, to: callee });
            self.set_call_timer(now, id, ROUTE_TIMEOUT, CallTimer::Route);
        }
    }

    /// F7 (and `route: local`): fork to every contact of `callee`.
    pub(super) fn ring_local(&mut self, now: Instant, id: u64, callee: &str) {
        if self.is_echo(callee) {
            return self.answer_echo(now, id);
        }
        let bindings = self.registrar.lookup(now, callee);
        if bindings.is_empty() {
            return self.fail_call(now, id, Failure::CalleeOffline);
        }
        if self.is_busy_except(callee, id) {
            return self.fail_call(now, id, Failure::Busy);
        }
        let direct_caller = matches!(self.calls.get(&id).map(|c| &c.a), Some(CallerSide::Direct(_)));
        let b_offer = if direct_caller {
            // The bridge is the media endpoint facing the phone: its SDP goes out as is.
            self.calls[&id].offer_sdp.clone()
        } else {
            let Some(pair) = self.media.allocate() else {
                return self.fail_call(now, id, Failure::Unavailable("no media ports left".into()));
            };
            let offer = self.calls[&id].offer_sdp.clone();
            let a_remote = trunkline_media::sdp::Sdp::parse(&offer).ok().and_then(|s| s.audio_rtp_addr());
            let b_offer = match trunkline_media::sdp::rewrite(&offer, pair.b_local.ip(), pair.b_local.port(), None) {
                Ok(s) => s,
                Err(e) => {
                    self.out.push_back(Output::MediaStop { id: pair.id });
                    return self.fail_call(now, id, Failure::NotAcceptable(format!("unusable SDP offer: {e}")));
                }
            };
            self.calls.get_mut(&id).expect("live call").media = Some(pair);
            self.out.push_back(Output::MediaStart { id: pair.id, a_remote, b_remote: None });
            b_offer
        };
        let call = self.calls.get_mut(&id).expect("live call");
        call.state = CallState::Ringing;
        let caller = call.caller.clone();
        let caller_name = call.caller_name.clone();
        for (i, b) in bindings.iter().enumerate() {
            let Ok(target) = Uri::parse(b.contact.trim_start_matches('<').trim_end_matches('>')) else { continue };
            let fork_call_id = format!("{}@{}", new_tag(&mut self.rng), self.cfg.adv_ip);
            let from_tag = new_tag(&mut self.rng);
            let branch = new_branch(&mut self.rng);
            let mut r = Request::new(Method::Invite, target);
            r.headers.push("Via", self.via(b.transport, &branch));
            r.headers.push("Max-Forwards", "70");
            let mut from = NameAddr::new(Uri::sip(Some(&caller), host_of(self.cfg.adv_ip), None));
            from.display = caller_name.clone();
            from.set_tag(&from_tag);
            r.set_from(&from);
            r.set_to(&NameAddr::new(Uri::sip(Some(callee), host_of(self.cfg.adv_ip), None)));
            r.set_call_id(&fork_call_id);
            r.set_cseq(&CSeq::new(1, Method::Invite));
            r.headers.push("Contact", self.contact());
            r.headers.push("Allow", ALLOW);
            r.headers.push("User-Agent", "Trunkline");
            r.set_body("application/sdp", b_offer.clone().into_bytes());
            self.by_b.insert(fork_call_id.clone(), (id, i));
            let call = self.calls.get_mut(&id).expect("live call");
            call.forks.push(Fork {
                call_id: fork_call_id,

                to_tag: None,
                branch: branch.clone(),
                dest: b.source,
                transport: b.transport,
                request: r.clone(),
                state: ForkState::Trying,
                remote_target: None,
                cseq: 1,
            });
            self.send_client(now, branch, r, b.source, b.transport, ClientOwner::Fork { call: id, fork: i });
        }
        self.set_call_timer(now, id, self.cfg.ring_timeout, CallTimer::Ring);
    }

    pub(super) fn is_echo(&self, number: &str) -> bool {
        self.cfg.echo_number.as_deref() == Some(number)
    }

    /// The echo-test number answers at once: a prompt tone, then the caller's own audio.
    pub(super) fn answer_echo(&mut self, now: Instant, id: u64) {
        let offer = self.calls[&id].offer_sdp.clone();
        let Some(echo) = self.media.start_echo(&offer) else {
            return self.fail_call(now, id, Failure::Unavailable("the echo test cannot start (no media ports)".into()));
        };
        tracing::info!(call = id, "answered by the echo test");
        self.out.push_back(Output::EchoStart { id: echo.id });
        let call = self.calls.get_mut(&id).expect("live call");
        call.echo = Some(echo.id);
        match &call.a {
            CallerSide::Direct(d) => {
                let bridge = d.bridge;
                self.out.push_back(Output::BridgeRemote { id: bridge, phone: echo.local });
                self.answer_a(now, id, String::new());
            }
            CallerSide::Sip(_) => self.answer_a(now, id, echo.answer),
        }
    }

    pub(super) fn on_cancel(&mut self, now: Instant, key: &ServerKey, req: &Request) {
        let invite_key = ServerKey { method: "INVITE".into(), ..key.clone() };
        let call = self.server_txs.get(&invite_key).and_then(|t| t.call);
        let Some(id) = call else {
            return self.reply(now, key, req, 481, "Call/Transaction Does Not Exist", |_| {});
        };
        self.reply(now, key, req, 200, "OK", |_| {});
        let final_sent = self.calls.get(&id).is_none_or(|c| c.a.final_sent());
        if !final_sent {
            tracing::info!(call = id, "caller cancelled");
            if let Some(cid) = self.calls.get(&id).and_then(|c| c.cloud_id.clone()) {
                self.cloud(ClientMsg::Cancel { call_id: cid });
            }
            self.fail_call(now, id, Failure::Cancelled);
        }
    }

    pub(super) fn fork_response(&mut self, now: Instant, id: u64, fi: usize, branch: &str, resp: Response, first_final: bool) {
        let status = resp.status;
        let Some(call) = self.calls.get_mut(&id) else {
            // The call is gone (RFC 3261 §13.2.2.4, §15): a late 2xx is ACKed each time it
            // comes, and hung up once.
            if (200..300).contains(&status) {
                self.ack_and_bye_orphan(now, branch, &resp, first_final);
            }
            return;
        };
        let Some(fork) = call.forks.get_mut(fi) else { return };
        if let Ok(to) = resp.to_ref()
            && let Some(tag) = to.tag()
        {
            fork.to_tag.get_or_insert_with(|| tag.to_string());
        }
        match status {
            100 => {}
            101..=199 => {
                if fork.state == ForkState::Trying {
                    fork.state = ForkState::Ringing;
                }
                self.send_ringing(now, id);
            }
            200..=299 => {
                fork.remote_target =
                    resp.contacts_ref().ok().and_then(|c| c.iter().find_map(|c| c.name_addr().map(|n| n.uri.clone())));
                let already = call.winner.is_some() && call.winner != Some(fi);
                // Every 2xx gets an ACK (retransmissions included).
                let ack = self.ack_2xx(id, fi);
                if let Some(ack) = ack {
                    self.out.push_back(ack);
                }
                let call = self.calls.get_mut(&id).expect("checked");
                if already || call.state == CallState::Done || call.a.final_sent() && call.winner.is_none() {
                    // Lost the race (or the caller gave up): hang this one up.
                    if call.forks[fi].state != ForkState::Answered {
                        call.forks[fi].state = ForkState::Answered;
                        self.bye_fork(now, id, fi);
                    }
                    return;
                }
                if call.winner == Some(fi) {
                    return; // 2xx retransmission, ACKed above.
                }
                call.winner = Some(fi);
                call.forks[fi].state = ForkState::Answered;
                let answer = String::from_utf8_lossy(&resp.body).into_owned();
                let media = call.media;
                // CANCEL the other forks.
                let others: Vec<usize> = (0..call.forks.len())
                    .filter(|&j| j != fi && matches!(call.forks[j].state, ForkState::Trying | ForkState::Ringing))
                    .collect();
                for j in others {
                    self.cancel_fork(now, id, j);
                }
                let phone_addr = trunkline_media::sdp::Sdp::parse(&answer).ok().and_then(|s| s.audio_rtp_addr());
                if let Some(CallerSide::Direct(d)) = self.calls.get(&id).map(|c| &c.a) {
                    // C15: the phone answered; the bridge sends to it.
                    let bridge = d.bridge;
                    if let Some(addr) = phone_addr {
                        self.out.push_back(Output::BridgeRemote { id: bridge, phone: addr });
                    }
                    return self.answer_a(now, id, String::new());
                }
                let Some(pair) = media else { return };
                if let Some(addr) = phone_addr {
                    self.out.push_back(Output::MediaRemote { id: pair.id, leg: MediaLeg::B, addr });
                }
                let a_answer = match trunkline_media::sdp::rewrite(&answer, pair.a_local.ip(), pair.a_local.port(), None) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(call = id, error = %e, "callee's SDP answer unusable");
                        self.bye_fork(now, id, fi);
                        return self.fail_call(now, id, Failure::NotAcceptable("the callee's SDP answer was unusable".into()));
                    }
                };
                self.answer_a(now, id, a_answer);
            }
            _ => {
                fork.state = ForkState::Failed(status);
                let all_done = call.forks.iter().all(|f| matches!(f.state, ForkState::Failed(_) | ForkState::Cancelled));
                if all_done && call.winner.is_none() && !call.a.final_sent() {
                    let codes: Vec<u16> = call
                        .forks
                        .iter()
                        .filter_map(|f| if let ForkState::Failed(c) = f.state { Some(c) } else { None })
                        .collect();
                    let failure = if codes.iter().any(|c| *c == 486 || *c == 600) {
                        Failure::Busy
                    } else if codes.contains(&603) {
                        Failure::Declined
                    } else {
                        Failure::NoAnswer(None)
                    };
                    self.fail_call(now, id, failure);
                }
            }
        }
    }

    /// The call is answered: tell the caller (200 OK with `sdp` to a SIP caller; `connected` to
    /// a direct caller, and C15 to the cloud).
    pub(super) fn answer_a(&mut self, now: Instant, id: u64, sdp: String) {
        let contact = self.contact_str();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.connected_at = Some(now);
        let a = match &mut call.a {
            CallerSide::Direct(d) => {
                d.final_sent = true;
                call.state = CallState::Connected;
                let (conn, cloud_id) = (d.conn, call.cloud_id.clone());
                let detail = format!("desk phone {} answered; bridged to the direct caller {}", call.callee, call.caller);
                if let Some(cid) = &cloud_id {
                    self.step(&cid.clone(), Step::C15, detail);
                }
                return self.direct_progress(conn, cloud_id, CallEvent::Connected);
            }
            CallerSide::Sip(a) => a,
        };
        let mut r = Response::to_request(&a.invite, 200, "OK");
        r.set_to_tag(&a.our_tag);
        r.headers.push("Contact", contact);
        r.headers.push("Allow", ALLOW);
        r.headers.push("Server", "Trunkline");
        r.set_body("application/sdp", sdp.clone().into_bytes());
        call.sdp_to_a = Some(sdp);
        a.final_sent = true;
        call.state = CallState::Answered;
        // The INVITE transaction repeats our 2xx until the ACK (timer G) and reports a missing
        // one (timer H).
        let (src, tr, key) = (a.src, a.transport, a.tx.clone());
        self.send_to_a(now, &key, src, tr, r);
    }

    /// Progress of the phone, to a direct caller and (as the carrier) to the cloud.
    pub(super) fn direct_progress(&mut self, conn: u64, cloud_id: Option<String>, event: CallEvent) {
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Progress { event: event.clone() }, close: false });
        if let Some(c) = cloud_id {
            self.cloud(ClientMsg::CallEvent { call_id: c, event });
        }
    }

    pub(super) fn send_ringing(&mut self, now: Instant, id: u64) {
        let contact = format!("<sip:{}:{}>", ip_host(self.cfg.adv_ip), self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.ringing_sent || call.a.final_sent() {
            return;
        }
        call.ringing_sent = true;
        let a = match &call.a {
            CallerSide::Direct(d) => {
                let (conn, cloud_id) = (d.conn, call.cloud_id.clone());
                return self.direct_progress(conn, cloud_id, CallEvent::Ringing);
            }
            CallerSide::Sip(a) => a,
        };
        let mut r = Response::to_request(&a.invite, 180, "Ringing");
        r.set_to_tag(&a.our_tag);
        r.headers.push("Contact", contact);
        let (src, tr, key) = (a.src, a.transport, a.tx.clone());
        self.send_to_a(now, &key, src, tr, r);
    }

    // ============================================================ ending calls

    /// End a call that was never answered: `failure`'s final to the caller (its text as a
    /// Warning), its outcome to the cloud, CANCEL forks, free media.
    pub(super) fn fail_call(&mut self, now: Instant, id: u64, failure: Failure) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.state == CallState::Done {
            return;
        }
        let was_final = call.a.final_sent();
        call.state = CallState::Done;
        let forks: Vec<usize> =
            (0..call.forks.len()).filter(|&j| matches!(call.forks[j].state, ForkState::Trying | ForkState::Ringing)).collect();
        let (code, reason) = failure.status();
        let why = failure.warning();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, code, reason = ?why, "call not connected");
        let outcome = failure.outcome();
        let report = call.cloud_id.clone().filter(|_| matches!(call.a, CallerSide::Direct(_)) || call.b_direct.is_some());
        let b_direct = call.b_direct;
        let mut to_send = None;
        match &mut call.a {
            CallerSide::Sip(a) => {
                a.final_sent = true;
                if !was_final {
                    let mut r = Response::to_request(&a.invite, code, reason);
                    r.set_to_tag(&a.our_tag);
                    r.headers.push("Server", "Trunkline");
                    if let Some(w) = why {
                        r.headers.push("Warning", warning(w));
                        r.headers.push("Reason", format!("SIP;cause={code};text=\"{}\"", w.replace('"', "'")));
                    }
                    to_send = Some((a.tx.clone(), r));
                }
            }
            CallerSide::Direct(d) => {
                d.final_sent = true;
                self.out.push_back(Output::Direct { conn: d.conn, msg: DirectServerMsg::Ended { outcome }, close: true });
            }
        }
        if let Some((b_conn, _)) = b_direct {
            self.out.push_back(Output::Direct { conn: b_conn, msg: DirectServerMsg::Ended { outcome }, close: true });
        }
        if let Some((remote, _)) = self.calls.get(&id).and_then(|c| c.b_remote.clone()) {
            self.out.push_back(Output::SessionHangup { id: remote });
        }
        for j in forks {
            self.cancel_fork(now, id, j);
        }
        if let Some((key, r)) = to_send {
            self.send_response(now, &key, r);
        }
        if let Some(cid) = report {
            self.end_report(now, id, cid, outcome, None);
        }
        self.finish(now, id);
    }

    /// BYE: `bye_a` / `bye_b` say which sides we must still hang up.
    pub(super) fn hangup(&mut self, now: Instant, id: u64, bye_a: bool, bye_b: bool) {
        let (adv_ip, port) = (self.cfg.adv_ip, self.cfg.sip_port);
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.state = CallState::Done;
        let duration_ms = call.connected_at.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let report = call.cloud_id.clone().filter(|_| matches!(call.a, CallerSide::Direct(_)) || call.b_direct.is_some());
        let mut bye = None;
        if bye_a {
            match &mut call.a {
                CallerSide::Sip(a) => {
                    a.our_cseq += 1;
                    let branch = new_branch(&mut self.rng);
                    let r = a.dialog_request(via_str(a.transport, adv_ip, port, &branch), a.our_cseq).build(Method::Bye);
                    bye = Some((branch, r, a.src, a.transport));
                }
                CallerSide::Direct(d) => {
                    self.out.push_back(Output::Direct {
                        conn: d.conn,
                        msg: DirectServerMsg::Ended { outcome: Outcome::Connected },
                        close: true,
                    });
                }
            }
        }
        let b_direct = call.b_direct;
        let winner = call.winner;
        if let Some((branch, r, src, tr)) = bye {
            self.send_client(now, branch, r, src, tr, ClientOwner::Fire);
        }
        let b_remote = self.calls.get(&id).and_then(|c| c.b_remote.as_ref().map(|(r, _)| *r));
        if let Some(r) = b_remote {
            // The direct leg to the other site ends with the call, whoever hung up.
            self.out.push_back(Output::SessionHangup { id: r });
        }
        if bye_b {
            if let Some((conn, _)) = b_direct {
                self.out.push_back(Output::Direct {
                    conn,
                    msg: DirectServerMsg::Ended { outcome: Outcome::Connected },
                    close: true,
                });
            } else if let Some(w) = winner {
                self.bye_fork(now, id, w);
            }
        }
        if let Some(cid) = report {
            self.end_report(now, id, cid, Outcome::Connected, duration_ms);
        }
        self.finish(now, id);
    }

    pub(super) fn finish(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.deadline = None;
        if let Some(m) = call.media.take() {
            self.out.push_back(Output::MediaStop { id: m.id });
        }
        if let Some(e) = call.echo.take() {
            self.out.push_back(Output::MediaStop { id: e });
        }
        let bridges: Vec<u64> = match &call.a {
            CallerSide::Direct(d) => vec![d.bridge],
            CallerSide::Sip(_) => vec![],
        }
        .into_iter()
        .chain(call.b_direct.map(|(_, b)| b))
        .chain(call.b_remote.as_ref().map(|(b, _)| *b))
        .collect();
        for b in bridges {
            self.out.push_back(Output::BridgeStop { id: b });
        }
        // Keep the call (for late 2xx/ACK matching) only while its dialog can still see
        // traffic; it is removed when its last timers are gone (see `reap`).
        let call = self.calls.remove(&id).expect("live");
        if let Some(a) = call.a.sip() {
            self.by_a.remove(&a.call_id);
            // Our 2xx is not repeated for a call that is over.
            if let Some(mut tx) = self.server_txs.get_mut(&a.tx) {
                tx.stop_2xx();
            }
            let key = a.tx.clone();
            self.retire_tx(now, &key);
        }
        let conns: Vec<u64> = match &call.a {
            CallerSide::Direct(d) => vec![d.conn],
            CallerSide::Sip(_) => vec![],
        };
        for c in conns.into_iter().chain(call.b_direct.map(|(c, _)| c)) {
            self.direct.remove(&c);
        }
        for f in &call.forks {
            self.by_b.remove(&f.call_id);
        }
        if let Some(c) = &call.cloud_id {
            self.by_cloud.remove(c);
            self.remote_by_call.remove(c);
        }
        if let Some((b, _)) = &call.b_remote {
            self.by_remote.remove(b);
        }
    }

    // ============================================================ helpers

    pub(super) fn is_busy(&self, number: &str) -> bool {
        self.queue.has_call_for(number)
            || self.calls.values().any(|c| c.state != CallState::Done && (c.caller == number || c.callee == number))
    }

    pub(super) fn is_busy_except(&self, number: &str, id: u64) -> bool {
        self.calls.iter().any(|(cid, c)| *cid != id && c.state != CallState::Done && (c.caller == number || c.callee == number))
    }
}

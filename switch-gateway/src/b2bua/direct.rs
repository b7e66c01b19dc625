//! C14 over WebRTC, carrier side: sessions whose offer came through the cloud, the key on
//! their DataChannel, and the phone side attached to them (C15).

use super::*;

impl Core {
    /// A message on the `trunkline-direct` DataChannel of session `conn` (C14: the key; then
    /// `hangup`). A refused key closes the leg and forgets it at once, so the connecting party
    /// may offer again (a new `direct_signal`) while the key lives.
    pub(super) fn direct_msg(&mut self, now: Instant, conn: u64, msg: DirectClientMsg) {
        match msg {
            DirectClientMsg::Present { .. } if self.direct.contains_key(&conn) => {
                self.refuse(conn, ErrorCode::AlreadyAuthenticated, "a key was already presented on this connection");
            }
            DirectClientMsg::Present { call_id, key, caller, .. } => {
                // A leg already forgotten (refused a moment ago, or gone): it is closing.
                let Some(session) = self.sessions.get(&conn) else { return };
                if session.call_id != call_id {
                    // The leg was set up for one call: another call's key cannot open it.
                    tracing::warn!(%call_id, "C14: key presented for another call than this connection's offer");
                    return self.refuse_session(conn, ErrorCode::BadKey, "this connection was set up for another call");
                }
                match self.queue.take(now, &call_id, &key, &caller) {
                    Err(e) => {
                        tracing::warn!(%call_id, %caller, error = %e, "C14: key refused");
                        self.refuse_session(conn, e.code(), key_error_text(e));
                    }
                    Ok(entry) => {
                        self.step(&call_id, Step::C14, format!("{caller} presented the one-time key; accepted"));
                        self.out.push_back(Output::Direct {
                            conn,
                            msg: DirectServerMsg::Accepted { call_id: call_id.clone() },
                            close: false,
                        });
                        self.cloud(ClientMsg::CallEvent { call_id: call_id.clone(), event: CallEvent::KeyAccepted });
                        self.direct.insert(conn, DirectSession { call_id: call_id.clone(), call: None });
                        // C15: the phone side joins this same leg.
                        match entry.direction {
                            Direction::Inbound => self.direct_inbound(now, conn, call_id, entry),
                            Direction::Outbound => self.direct_outbound(now, conn, call_id),
                        }
                    }
                }
            }
            DirectClientMsg::Offer { .. } => {
                let msg = "the offer goes through the cloud (direct_signal), not on the DataChannel";
                if self.direct.contains_key(&conn) {
                    self.refuse(conn, ErrorCode::WrongState, msg);
                } else {
                    self.refuse_session(conn, ErrorCode::WrongState, msg);
                }
            }
            DirectClientMsg::Hangup => self.direct_gone(now, conn),
        }
    }

    /// Refuse on session `conn`'s DataChannel; its leg closes.
    pub(super) fn refuse(&mut self, conn: u64, code: ErrorCode, message: &str) {
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Error { code, message: message.into() }, close: true });
    }

    /// Refuse on a session whose key was not accepted, and forget the session now (its leg
    /// closes; the call's key stays as the queue left it).
    pub(super) fn refuse_session(&mut self, conn: u64, code: ErrorCode, message: &str) {
        self.refuse(conn, code, message);
        if let Some(s) = self.sessions.remove(&conn) {
            self.session_by_call.remove(&s.call_id);
            self.out.push_back(Output::BridgeStop { id: conn });
        }
    }

    pub(super) fn direct_gone(&mut self, now: Instant, conn: u64) {
        if let Some(s) = self.sessions.remove(&conn) {
            self.session_by_call.remove(&s.call_id);
            if !self.direct.contains_key(&conn) {
                // The leg ended before a key was accepted: free it; the key stays queued
                // until it is used or expires (the connecting party may try again).
                self.out.push_back(Output::BridgeStop { id: conn });
            }
        }
        let Some(session) = self.direct.remove(&conn) else { return };
        let Some(id) = session.call else {
            // Key accepted but the call never started: the attempt ends here.
            self.cloud(ClientMsg::CallEvent {
                call_id: session.call_id,
                event: CallEvent::Ended { outcome: Outcome::Cancelled, duration_ms: None },
            });
            return;
        };
        let Some(call) = self.calls.get(&id) else { return };
        tracing::info!(call = id, "direct caller left");
        match (&call.a, call.state) {
            (CallerSide::Direct(_), CallState::Connected) => self.hangup(now, id, false, true),
            (CallerSide::Direct(_), _) => self.fail_call(now, id, Failure::Cancelled),
            // C3: the browser callee left; the phone that called hangs up too.
            (CallerSide::Sip(_), CallState::Connected | CallState::Answered) => self.hangup(now, id, true, false),
            (CallerSide::Sip(_), _) => self.fail_call(now, id, Failure::NoAnswer(Some("the callee left"))),
        }
    }

    /// F1/F2 callee side (C15): the key on session `conn` checked out; attach our phone to its
    /// leg and ring the phone.
    pub(super) fn direct_inbound(&mut self, now: Instant, conn: u64, call_id: String, entry: crate::queue::Entry) {
        let setup = match self.bridges.attach(conn, None) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot attach the phone side");
                self.refuse(conn, e.code(), &e.to_string());
                self.cloud(ClientMsg::CallEvent {
                    call_id,
                    event: CallEvent::Ended { outcome: Outcome::Error, duration_ms: None },
                });
                self.direct.remove(&conn);
                return;
            }
        };
        self.out.push_back(Output::BridgeStart { id: setup.id, phone: None });
        let id = self.next_call;
        self.next_call += 1;
        let caller_name = Some(entry.presenter.to_string());
        self.calls.insert(
            id,
            Call {
                caller: entry.presenter.clone(),
                callee: entry.phone.clone(),
                a: CallerSide::Direct(DirectSide { conn, bridge: setup.id, final_sent: false }),
                offer_sdp: setup.phone_sdp,
                caller_name,
                b_direct: None,
                b_remote: None,
                echo: None,
                forks: vec![],
                winner: None,
                media: None,
                state: CallState::Routing,
                cloud_id: Some(call_id.clone()),
                ringing_sent: false,
                deadline: None,
                connected_at: None,
                sdp_to_a: None,
                sdp_to_b: None,
                started_ms: self.unix_ms(now),
            },
        );
        self.by_cloud.insert(call_id, id);
        if let Some(s) = self.direct.get_mut(&conn) {
            s.call = Some(id);
        }
        let phone = entry.phone.clone();
        self.ring_local(now, id, &phone);
    }

    /// C14 over WebRTC, carrier side: the connecting party's offer and candidates, relayed by
    /// the cloud. Only for a call waiting in our queue (a key was issued for it); one leg per
    /// call. The answer goes back the same way; the key comes later on the DataChannel.
    pub(super) fn direct_signal(&mut self, now: Instant, call_id: String, payload: SignalPayload) {
        match payload {
            SignalPayload::Offer { sdp } => {
                if !self.queue.is_waiting(&call_id) {
                    tracing::warn!(%call_id, "C14: WebRTC offer for a call that is not waiting here; ignored");
                    return;
                }
                if self.session_by_call.contains_key(&call_id) {
                    tracing::warn!(%call_id, "C14: a second WebRTC offer for the same call; ignored");
                    return;
                }
                match self.bridges.open_session(now, &sdp) {
                    Ok((id, answer)) => {
                        tracing::info!(%call_id, session = id, "C14: WebRTC leg answered; waiting for the key on its DataChannel");
                        self.sessions.insert(id, WebRtcSession { call_id: call_id.clone() });
                        self.session_by_call.insert(call_id.clone(), id);
                        self.out.push_back(Output::SessionStart { id, call_id: call_id.clone(), present: None });
                        self.cloud(ClientMsg::DirectSignal { call_id, payload: SignalPayload::Answer { sdp: answer } });
                    }
                    Err(e) => {
                        tracing::warn!(%call_id, error = %e, "C14: WebRTC offer refused");
                        let outcome = if e == BridgeError::NoPorts { Outcome::SwitchUnavailable } else { Outcome::Error };
                        self.queue.cancel(now, &call_id);
                        self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Ended { outcome, duration_ms: None } });
                    }
                }
            }
            SignalPayload::Ice { candidate, .. } => {
                if let Some(&id) = self.session_by_call.get(&call_id) {
                    self.out.push_back(Output::SessionCandidate { id, candidate });
                } else if let Some(&bridge) = self.remote_by_call.get(&call_id) {
                    self.out.push_back(Output::SessionCandidate { id: bridge, candidate });
                }
            }
            // F2 caller side: the callee switch's answer to our offer.
            SignalPayload::Answer { sdp } => {
                if let Some(&bridge) = self.remote_by_call.get(&call_id) {
                    self.remote_event(now, bridge, RemoteEvent::Answer(sdp));
                }
            }
            SignalPayload::EndOfCandidates => {}
        }
    }

    /// C3 carrier side (C15): the switchless callee's key on session `conn` checked out; answer
    /// the waiting phone's INVITE through that leg.
    pub(super) fn direct_outbound(&mut self, now: Instant, conn: u64, call_id: String) {
        let Some(id) = self.by_cloud.get(&call_id).copied() else {
            self.refuse(conn, ErrorCode::UnknownCall, "the calling phone gave up");
            self.direct.remove(&conn);
            return;
        };
        let phone_offer = self.calls.get(&id).map(|c| c.offer_sdp.clone()).unwrap_or_default();
        let setup = match self.bridges.attach(conn, Some(&phone_offer)) {
            Ok(s) => s,
            Err(e) => {
                self.refuse(conn, e.code(), &e.to_string());
                self.direct.remove(&conn);
                return self.fail_call(now, id, Failure::NotAcceptable("the callee's media could not be bridged".into()));
            }
        };
        let phone_addr = trunkline_media::sdp::Sdp::parse(&phone_offer).ok().and_then(|s| s.audio_rtp_addr());
        self.out.push_back(Output::BridgeStart { id: setup.id, phone: phone_addr });
        if let Some(s) = self.direct.get_mut(&conn) {
            s.call = Some(id);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.b_direct = Some((conn, setup.id));
        }
        self.step(&call_id, Step::C15, "the switchless callee connected directly; bridged to the desk phone");
        self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Connected });
        self.out.push_back(Output::Direct { conn, msg: DirectServerMsg::Progress { event: CallEvent::Connected }, close: false });
        self.answer_a(now, id, setup.phone_sdp);
    }
}

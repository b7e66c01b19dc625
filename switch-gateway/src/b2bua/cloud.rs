//! The cloud exchange: route queries (B2), callee queries (C11/C12), C2 towards a callee switch
//! over WebRTC (F2 caller side), outcomes and end-of-call reports.

use super::*;

impl Core {
    pub(super) fn cloud(&mut self, m: ClientMsg) {
        self.out.push_back(Output::Cloud(m));
    }

    pub(super) fn on_cloud_msg(&mut self, now: Instant, m: ServerMsg) {
        match m {
            ServerMsg::SwitchWelcome { sip_realm, phones, .. } => self.set_phones(now, Some(&sip_realm), phones),
            ServerMsg::PhonesUpdate { phones } => self.set_phones(now, None, phones),
            ServerMsg::DirectSignal { call_id, payload } => self.direct_signal(now, call_id, payload),
            ServerMsg::CalleeQuery { call_id, from, to, .. } => self.callee_query(now, call_id, from, to),
            ServerMsg::Route { call_id, route } => self.route_answer(now, &call_id, route),
            ServerMsg::Connect { call_id, key, .. } => self.connect_remote(now, call_id, key),
            ServerMsg::CallEvent { call_id, event: CallEvent::Ringing } => {
                if let Some(id) = self.by_cloud.get(&call_id).copied() {
                    self.send_ringing(now, id);
                }
            }
            ServerMsg::Outcome { call_id, outcome, .. } => {
                if self.queue.cancel(now, &call_id).is_some() {
                    tracing::info!(%call_id, %outcome, "cloud ended a queued call");
                }
                if let Some(id) = self.by_cloud.get(&call_id).copied() {
                    let state = self.calls.get(&id).map(|c| c.state);
                    if matches!(state, Some(CallState::Routing | CallState::AwaitingDirect)) {
                        self.fail_call(now, id, Failure::Remote(outcome));
                    } else if outcome == Outcome::MediaLost && matches!(state, Some(CallState::Answered | CallState::Connected)) {
                        // The cloud ended a call we bridge because its party reported the media
                        // path dead: that party is gone even if our leg never says so (str0m
                        // may not report a dead peer for a long time), so end our side as if it
                        // had hung up. Other outcomes for a live call (e.g. after a link blip,
                        // for a call our sign-in list did not carry) leave it to the parties.
                        let conn = self.calls.get(&id).and_then(|c| match &c.a {
                            CallerSide::Direct(d) => Some(d.conn),
                            CallerSide::Sip(_) => c.b_direct.map(|(conn, _)| conn),
                        });
                        if let Some(conn) = conn {
                            tracing::info!(%call_id, %outcome, "cloud ended a bridged call: hanging up our side");
                            self.direct_gone(now, conn);
                        }
                    }
                }
            }
            ServerMsg::Error { code, message, call_id } => {
                tracing::warn!(%code, %message, call_id = ?call_id, "cloud refused a message");
                if let Some(cid) = call_id
                    && let Some(id) = self.by_cloud.get(&cid).copied()
                    && self.calls.get(&id).is_some_and(|c| c.state == CallState::Routing)
                {
                    self.fail_call(now, id, Failure::Unavailable(message));
                }
            }
            _ => {}
        }
    }

    /// C2 (F2 caller side): the callee's switch (named in `connect`) + key. Connect to it
    /// directly over WebRTC: an offer (audio + DataChannel) from a new bridge whose phone side
    /// answers our phone goes through the cloud; the key follows on the DataChannel.
    pub(super) fn connect_remote(&mut self, now: Instant, call_id: String, key: String) {
        let Some(id) = self.by_cloud.get(&call_id).copied() else { return };
        let Some(call) = self.calls.get(&id) else { return };
        if call.state != CallState::Routing || call.b_remote.is_some() {
            return;
        }
        let (caller, phone_offer) = (call.caller.clone(), call.offer_sdp.clone());
        // C14 over WebRTC: offer through the cloud, the key on the DataChannel.
        let setup = match self.bridges.offer_session(now, &phone_offer) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot set up the direct leg");
                let failure = if e == BridgeError::NoPorts {
                    Failure::Unavailable(e.to_string())
                } else {
                    Failure::NotAcceptable(e.to_string())
                };
                return self.fail_call(now, id, failure);
            }
        };
        self.step(&call_id, Step::C2, "connecting directly to the callee's switch over WebRTC");
        if let Some(c) = self.calls.get_mut(&id) {
            c.b_remote = Some((setup.id, setup.phone_sdp));
        }
        self.by_remote.insert(setup.id, id);
        self.remote_by_call.insert(call_id.clone(), setup.id);
        let present = DirectClientMsg::Present { v: trunkline_protocol::PROTOCOL_VERSION, call_id: call_id.clone(), key, caller };
        self.out.push_back(Output::SessionStart { id: setup.id, call_id: call_id.clone(), present: Some(present) });
        self.cloud(ClientMsg::DirectSignal { call_id, payload: SignalPayload::Offer { sdp: setup.answer } });
    }

    /// F2 caller side: what the callee switch did with our call (its answer through the cloud,
    /// then what it says on the session's DataChannel, or the session's end).
    pub(super) fn remote_event(&mut self, now: Instant, bridge: u64, ev: RemoteEvent) {
        let Some(id) = self.by_remote.get(&bridge).copied() else { return };
        let Some(call) = self.calls.get(&id) else { return };
        let answered = call.a.final_sent();
        let phone_sdp = call.b_remote.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        match ev {
            RemoteEvent::Accepted => {}
            RemoteEvent::Answer(sdp) => match self.bridges.remote_answer(bridge, &sdp) {
                Ok(()) => {
                    let phone = trunkline_media::sdp::Sdp::parse(&call.offer_sdp).ok().and_then(|s| s.audio_rtp_addr());
                    self.out.push_back(Output::BridgeStart { id: bridge, phone });
                }
                Err(e) => {
                    self.out.push_back(Output::SessionHangup { id: bridge });
                    self.fail_call(now, id, Failure::NotAcceptable(format!("the callee's site answered badly: {e}")));
                }
            },
            RemoteEvent::Progress(CallEvent::Ringing) => self.send_ringing(now, id),
            RemoteEvent::Progress(CallEvent::Connected) if !answered => {
                if let Some(cid) = call.cloud_id.clone() {
                    self.step(&cid, Step::C15, "the callee's switch bridged the call to its phone");
                }
                self.answer_a(now, id, phone_sdp);
            }
            RemoteEvent::Progress(_) => {}
            RemoteEvent::Ended(outcome) if answered => {
                let _ = outcome;
                self.hangup(now, id, true, false);
            }
            RemoteEvent::Ended(outcome) => {
                self.fail_call(now, id, Failure::Remote(outcome));
            }
            RemoteEvent::Refused { code, message } => {
                tracing::warn!(call = id, %code, %message, "callee's site refused the direct connection");
                if answered {
                    self.hangup(now, id, true, false);
                } else {
                    self.fail_call(now, id, Failure::Unavailable(message));
                }
            }
            RemoteEvent::Closed(why) => {
                if answered {
                    self.hangup(now, id, true, false);
                } else {
                    // The direct connection never came up: the cloud records why.
                    if let Some(call_id) = self.calls.get(&id).and_then(|c| c.cloud_id.clone()) {
                        let reason: String = why.chars().take(150).collect();
                        self.cloud(ClientMsg::ConnectFailed { call_id, reason });
                    }
                    self.fail_call(now, id, Failure::Unavailable(why));
                }
            }
        }
    }

    pub(super) fn set_phones(&mut self, now: Instant, realm: Option<&str>, phones: Vec<PhoneEntry>) {
        for gone in self.phones.replace(realm, phones) {
            self.registrar.remove_aor(&gone);
        }
        self.registrations_changed(now);
        self.out.push_back(Output::SavePhones(self.phones.snapshot()));
        tracing::info!(count = self.phones.len(), "phone list updated");
    }

    /// C11 → C12: can our phone `to` take a call from `from`?
    pub(super) fn callee_query(&mut self, now: Instant, call_id: String, from: String, to: String) {
        let decline = |reason| QueryAnswer::Decline { reason };
        let answer = if self.is_echo(&to) {
            match self.queue.insert(now, &call_id, &from, &to, Direction::Inbound) {
                Some(key) => QueryAnswer::Accept {
                    url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                    key,
                    expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                },
                None => decline(DeclineReason::Busy),
            }
        } else if !self.phones.contains(&to) || !self.registrar.is_registered(now, &to) {
            decline(DeclineReason::NotRegistered)
        } else if self.is_busy(&to) {
            decline(DeclineReason::Busy)
        } else {
            match self.queue.insert(now, &call_id, &from, &to, Direction::Inbound) {
                Some(key) => QueryAnswer::Accept {
                    url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                    key,
                    expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                },
                None => decline(DeclineReason::Busy),
            }
        };
        let detail = match &answer {
            QueryAnswer::Accept { .. } => format!("call from {from} to {to} queued; address and one-time key issued"),
            QueryAnswer::Decline { reason } => format!("call from {from} to {to} declined: {reason:?}"),
        };
        self.step(&call_id, Step::C12, detail);
        self.cloud(ClientMsg::QueryAnswer { call_id, answer });
    }

    pub(super) fn route_answer(&mut self, now: Instant, cloud_id: &str, route: Route) {
        let Some(id) = self.by_cloud.get(cloud_id).copied() else { return };
        if self.calls.get(&id).is_none_or(|c| c.state != CallState::Routing) {
            return;
        }
        match route {
            Route::Invalid { reason } => {
                tracing::info!(call_id = %cloud_id, step = "B3", %reason, "callee does not exist");
                self.fail_call(now, id, Failure::NotFound(reason));
            }
            Route::Local => {
                let callee = self.calls[&id].callee.clone();
                self.ring_local(now, id, &callee);
            }
            Route::Switch { switch_id, .. } => {
                tracing::info!(call_id = %cloud_id, step = "B5", %switch_id, "callee is on another switch; waiting for C2");
            }
            Route::Device { device_id } => {
                // B6 → C3: queue the call for the switchless callee and hand the cloud our key.
                let caller = self.calls[&id].caller.clone();
                match self.queue.insert(now, cloud_id, &device_id, &caller, Direction::Outbound) {
                    Some(key) => {
                        tracing::info!(call_id = %cloud_id, step = "B6", %device_id, "queued for a switchless callee");
                        self.cloud(ClientMsg::DirectOffer {
                            call_id: cloud_id.to_string(),
                            url: trunkline_protocol::switch_address(&self.cfg.switch_id),
                            key,
                            expires_in_ms: self.cfg.key_ttl.as_millis() as u64,
                        });
                        if let Some(c) = self.calls.get_mut(&id) {
                            c.state = CallState::AwaitingDirect;
                        }
                        self.cancel_timer(id);
                        self.send_ringing(now, id);
                    }
                    None => self.fail_call(now, id, Failure::Internal("duplicate call id".into())),
                }
            }
        }
    }

    /// The cloud's end-of-call report for call `id`: with what the record needs (caller,
    /// callee, times), so a cloud that restarted meanwhile still writes it. Numbers the
    /// protocol cannot carry fall back to a plain `ended` event.
    pub(super) fn end_report(&mut self, now: Instant, id: u64, call_id: String, outcome: Outcome, duration_ms: Option<u64>) {
        let Some(call) = self.calls.get(&id) else { return };
        let ok = |n: &str| trunkline_protocol::check_number("n", n).is_ok();
        if !ok(&call.caller) || !ok(&call.callee) {
            self.cloud(ClientMsg::CallEvent { call_id, event: CallEvent::Ended { outcome, duration_ms } });
            return;
        }
        let ended_ms = self.unix_ms(now).max(call.started_ms);
        let duration_ms = duration_ms.map(|d| d.min((ended_ms - call.started_ms) as u64));
        let m = ClientMsg::CallReport {
            call_id,
            outcome,
            duration_ms,
            from: call.caller.clone(),
            to: call.callee.clone(),
            started_ms: call.started_ms,
            ended_ms,
        };
        self.cloud(m);
    }
}

pub(super) fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Connected => "connected",
        Outcome::RejectedInvalid => "number does not exist",
        Outcome::Declined => "declined",
        Outcome::Busy => "busy",
        Outcome::NoAnswer => "no answer",
        Outcome::CalleeOffline => "callee offline",
        Outcome::SwitchUnavailable => "the callee's site is unavailable",
        Outcome::KeyExpired => "the callee did not connect in time",
        Outcome::Cancelled => "cancelled",
        Outcome::Error => "error",
        Outcome::ConnectFailed => "the direct connection could not be made",
        Outcome::MediaLost => "the media path was lost",
    }
}

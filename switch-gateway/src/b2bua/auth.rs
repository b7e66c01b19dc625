//! Registrar glue and digest authentication: REGISTER, the digest check, challenges, and the
//! guard against guessing and scanning.

use super::*;

impl Core {
    /// Answer a request that is not authenticated (statelessly), if the source's budget of
    /// such requests allows; else the source is blocked and gets nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_unauthenticated(
        &mut self,
        now: Instant,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        status: u16,
        reason: &str,
        edit: impl FnOnce(&mut Response),
    ) {
        if self.admit_unauthenticated(now, src) {
            self.reply_stateless(src, transport, req, status, reason, edit);
        }
    }

    /// Spend one of `src`'s unauthenticated requests; false: drop the request (no answer).
    pub(super) fn admit_unauthenticated(&mut self, now: Instant, src: SocketAddr) -> bool {
        match self.guard.on_unauthenticated(now, src.ip()) {
            Admit::Answer => true,
            Admit::Drop => {
                metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
                false
            }
            Admit::Block(ev) => {
                self.blocked(&ev);
                metrics::counter!("trunkline_sip_dropped_total", "reason" => "blocked").increment(1);
                false
            }
        }
    }

    /// A block starts: logged and counted once; a source's block goes to the driver.
    pub(super) fn blocked(&mut self, ev: &BlockEvent) {
        let secs = ev.duration.as_secs();
        match &ev.what {
            Blocked::Source(ip) => {
                tracing::warn!(src = %ip, reason = ev.reason, block_secs = secs, "SIP source blocked: ignoring it");
                metrics::counter!("trunkline_sip_blocked_sources_total", "reason" => ev.reason).increment(1);
                self.out.push_back(Output::Block { ip: *ip, until: ev.until });
            }
            Blocked::Account(number) => {
                tracing::warn!(%number, reason = ev.reason, block_secs = secs, "SIP number under attack: not checking its credentials from untrusted addresses");
                metrics::counter!("trunkline_sip_blocked_accounts_total").increment(1);
            }
        }
    }

    // ------------------------------------------------------------ REGISTER

    pub(super) fn on_register(&mut self, now: Instant, key: &ServerKey, src: SocketAddr, transport: Transport, req: &Request) {
        let Ok(to) = req.to_ref() else {
            return self.reply_unauthenticated(now, src, transport, req, 400, "Bad Request", |_| {});
        };
        let aor = to.uri.user.clone().unwrap_or_default();
        let user = match self.authenticate(now, src, transport, req, "REGISTER") {
            Some(u) => u,
            None => return,
        };
        // No server transaction: the answer is remembered for retransmissions instead (`Answered`).
        if user != aor {
            tracing::warn!(%src, %user, %aor, "REGISTER for another number refused");
            return self.reply_remembered(now, key, src, transport, req, 403, "Forbidden", |_| {});
        }
        let contacts = match req.contacts_ref() {
            Ok(c) => c,
            Err(_) => return self.reply_remembered(now, key, src, transport, req, 400, "Bad Contact", |_| {}),
        };
        let header_expires = req.expires().ok().flatten();
        let wildcard = contacts.iter().any(|c| matches!(c, Contact::Star));
        let updates: Vec<ContactUpdate> = contacts
            .iter()
            .filter_map(|c| c.name_addr())
            .map(|na| ContactUpdate {
                contact: format!("<{}>", na.uri),
                expires: na.expires().or(header_expires).unwrap_or(3600),
            })
            .collect();
        let (call_id, cseq) = (req.call_id().unwrap_or("").to_string(), req.cseq().map(|c| c.seq).unwrap_or(0));
        let result = self.registrar.register(now, &aor, &updates, wildcard, header_expires, src, transport, &call_id, cseq);
        self.registrations_changed(now);
        match result {
            Ok(bindings) => {
                tracing::info!(number = %aor, %src, contacts = bindings.len(), "registered");
                self.reply_remembered(now, key, src, transport, req, 200, "OK", |r| {
                    for b in &bindings {
                        let left = b.expires.saturating_duration_since(now).as_secs().max(1);
                        r.headers.push("Contact", format!("{};expires={left}", b.contact));
                    }
                });
            }
            Err(RegisterError::TooBrief(min)) => {
                self.reply_remembered(now, key, src, transport, req, 423, "Interval Too Brief", |r| {
                    r.headers.push("Min-Expires", min.to_string())
                })
            }
            Err(e) => {
                let text = e.to_string();
                self.reply_remembered(now, key, src, transport, req, 400, "Bad Request", |r| {
                    r.headers.push("Warning", warning(&text))
                })
            }
        }
    }

    /// Digest check (RFC 8760 SHA-256 or MD5). Returns the authenticated number, or answers
    /// the request without a transaction (401 challenge, or 403 — the same for an unknown number
    /// and a wrong password, after the same work, so numbers cannot be enumerated), or drops it
    /// (the source's budget ran out, or the number is under attack and this address is not one
    /// it authenticated from) and returns `None`.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        src: SocketAddr,
        transport: Transport,
        req: &Request,
        method: &str,
    ) -> Option<String> {
        let realm = self.phones.realm().to_string();
        let unix = self.unix_secs(now);
        let creds = req
            .headers
            .get_all("Authorization")
            .chain(req.headers.get_all("Proxy-Authorization"))
            .filter_map(|v| digest::parse_authorization(v).ok())
            .find(|c| c.realm == realm);
        let Some(creds) = creds else {
            self.challenge(now, src, transport, req, false);
            return None;
        };
        match self.nonces.check(&creds.nonce, unix, NONCE_MAX_AGE) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => {
                self.challenge(now, src, transport, req, true);
                return None;
            }
            NonceCheck::Invalid => {
                self.challenge(now, src, transport, req, false);
                return None;
            }
        }
        let number = creds.username.chars().take(64).collect::<String>();
        if !self.phones.is_loaded() {
            // A new gateway that has not heard from its cloud yet knows no phone: a refusal now
            // would be wrong (and count against the phone as a guess). 503 makes it retry.
            tracing::info!(%src, %number, "SIP authentication deferred: no phone list yet (cloud not reached)");
            self.reply_stateless(src, transport, req, 503, "Service Unavailable", |r| r.headers.push("Retry-After", "5"));
            return None;
        }
        if self.guard.account_locked(now, &creds.username, src.ip()) {
            // Not checked, not answered: guessing this number from here gets nothing. It still
            // costs the source from its unauthenticated budget.
            metrics::counter!("trunkline_sip_dropped_total", "reason" => "account_locked").increment(1);
            tracing::debug!(%src, %number, "credentials for a number under attack from an untrusted address: dropped");
            self.admit_unauthenticated(now, src);
            return None;
        }
        if let Err(why) = self.nonce_uses.check(&creds.nonce, creds.nc.as_deref()) {
            // A captured Authorization replayed (or a nonce-count gone backwards): a fresh
            // challenge, as for a request without credentials.
            metrics::counter!("trunkline_sip_auth_failures_total", "kind" => "replayed_nonce").increment(1);
            tracing::warn!(%src, %number, kind = "replayed_nonce", reuse = ?why, "SIP authentication refused: nonce-count already used");
            self.challenge(now, src, transport, req, false);
            return None;
        }
        // An unknown number is checked against a decoy verifier: the same work, the same answer.
        let (ha1, known) = match self.phones.get(&creds.username) {
            Some(p) => {
                let ha1 = match creds.algorithm {
                    Algorithm::Sha256 => &p.ha1_sha256,
                    Algorithm::Md5 => &p.ha1_md5,
                };
                (ha1.clone(), !ha1.is_empty())
            }
            None => (String::new(), false),
        };
        let decoy = match creds.algorithm {
            Algorithm::Sha256 => DECOY_HA1_SHA256,
            Algorithm::Md5 => DECOY_HA1_MD5,
        };
        let ok = digest::verify(&creds, method, if known { &ha1 } else { decoy }) && known;
        if ok {
            let expires = unix + NONCE_MAX_AGE + 120;
            self.nonce_uses.record(&creds.nonce, creds.nc.as_deref(), unix, expires);
            self.guard.on_success(now, src.ip(), &creds.username);
            Some(creds.username.clone())
        } else {
            let kind = if known { "wrong_password" } else { "unknown_number" };
            metrics::counter!("trunkline_sip_auth_failures_total", "kind" => kind).increment(1);
            tracing::warn!(%src, %number, kind, method, "SIP authentication failed");
            for ev in self.guard.on_failure(now, src.ip(), &creds.username) {
                self.blocked(&ev);
            }
            self.reply_stateless(src, transport, req, 403, "Forbidden", |_| {});
            None
        }
    }

    /// A 401 with a fresh nonce, without a transaction (nonces are stateless); counted against
    /// the source's unauthenticated budget.
    pub(super) fn challenge(&mut self, now: Instant, src: SocketAddr, transport: Transport, req: &Request, stale: bool) {
        if !self.admit_unauthenticated(now, src) {
            return;
        }
        let realm = self.phones.realm().to_string();
        let nonce = self.nonces.issue(self.unix_secs(now));
        let algs = self.cfg.digest_algorithms.clone();
        self.reply_stateless(src, transport, req, 401, "Unauthorized", |r| {
            // RFC 8760 §2.4: the preferred algorithm first.
            for a in algs {
                r.headers.push("WWW-Authenticate", digest::www_authenticate(&realm, &nonce, a, stale));
            }
        });
    }
}

/// Verifiers no password hashes to (not hex): checked for numbers nobody has.
const DECOY_HA1_MD5: &str = "decoy-decoy-decoy-decoy-decoy-de";
const DECOY_HA1_SHA256: &str = "decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-decoy-deco";

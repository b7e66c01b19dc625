//! Registrar bindings (RFC 3261 §10.3), sans-IO: which contacts each desk phone number has,
//! until when, and where their packets actually came from (phones behind NAT or with a wrong
//! idea of their own address are reached at the source address, as with symmetric RTP).
//! Its disk copy ([`SavedRegistrations`], `state_dir/registrations.json`) lets a restarted
//! gateway reach its phones before they register again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as the phone gave it (sent back in 200 OK and used as Request-URI).
    pub contact: Arc<str>,
    /// Where the REGISTER came from: requests to this binding go there.
    pub source: SocketAddr,
    pub transport: Transport,
    pub expires: Instant,
    pub call_id: Arc<str>,
    pub cseq: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// RFC 3261 §10.3 step 7: a retransmitted or reordered REGISTER (same Call-ID, CSeq not higher).
    #[error("CSeq {0} is not higher than the last one for this Call-ID")]
    OutOfOrder(u32),
    /// `Contact: *` must come alone and with `Expires: 0`.
    #[error("Contact: * must be alone and with Expires: 0")]
    BadWildcard,
    /// Interval below the minimum (423), carrying the minimum.
    #[error("interval too brief; at least {0} s")]
    TooBrief(u32),
}

/// One contact in a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactUpdate {
    pub contact: String,
    /// Seconds requested (from the contact's `expires` param, else the Expires header, else default).
    pub expires: u32,
}

pub struct Registrar {
    /// Strings are shared (`Arc`), so the disk copy's snapshot of 100,000 bindings costs the
    /// core task reference counts, not allocations (it was 7–17 ms for 60,000).
    bindings: HashMap<Arc<str>, Vec<Binding>>,
    min_expires: u32,
    max_expires: u32,
    /// How bindings changed since [`Registrar::take_changed`].
    changed: Change,
}

/// How the bindings changed since the disk copy was taken: what decides how soon it is
/// taken again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    #[default]
    None,
    /// Only expiry times moved: phones refreshed their registrations from where they were.
    /// The old copy still reaches them (a phone refreshes well before its binding expires).
    Refreshed,
    /// A binding was added or removed, or a phone now sends from elsewhere: the old copy
    /// would not reach it.
    Moved,
}

/// The bindings as saved in `state_dir/registrations.json`: what a restarted gateway needs to
/// reach its phones before they register again (after an upgrade, a phone may wait up to
/// `max_expires_secs` before it does).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRegistrations {
    pub bindings: Vec<SavedBinding>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedBinding {
    pub number: Arc<str>,
    pub contact: Arc<str>,
    pub source: SocketAddr,
    pub transport: Transport,
    /// Wall time (Unix ms) the binding expires at: a monotonic `Instant` means nothing to the
    /// next process.
    pub expires_unix_ms: i64,
    pub call_id: Arc<str>,
    pub cseq: u32,
}

/// Most contacts one number may hold (a phone plus a few soft clients).
pub const MAX_CONTACTS: usize = 10;

impl Registrar {
    pub fn new(min_expires: u32, max_expires: u32) -> Self {
        Registrar { bindings: HashMap::new(), min_expires, max_expires, changed: Change::None }
    }

    /// How bindings changed since the last call (the disk copy is out of date unless `None`).
    pub fn take_changed(&mut self) -> Change {
        std::mem::take(&mut self.changed)
    }

    /// The live bindings, for the disk copy; `unix_ms` is `now` in wall time.
    pub fn snapshot(&self, now: Instant, unix_ms: i64) -> SavedRegistrations {
        let bindings = self
            .bindings
            .iter()
            .flat_map(|(number, list)| list.iter().map(move |b| (number, b)))
            .filter(|(_, b)| b.expires > now)
            .map(|(number, b)| SavedBinding {
                number: number.clone(),
                contact: b.contact.clone(),
                source: b.source,
                transport: b.transport,
                expires_unix_ms: unix_ms.saturating_add(b.expires.duration_since(now).as_millis() as i64),
                call_id: b.call_id.clone(),
                cseq: b.cseq,
            })
            .collect();
        SavedRegistrations { bindings }
    }

    /// Take the disk copy's UDP bindings of the numbers `keep` accepts that have not expired at
    /// `now` (`unix_ms` in wall time). Left out: bindings over TCP and TLS (the phone's
    /// connection died with the old process: its source is an ephemeral port nobody listens
    /// on, and a phone notices its connection closed and registers again at once), and anything
    /// past this registrar's limits (a copy from a differently configured gateway). Returns
    /// how many were taken.
    pub fn restore(&mut self, now: Instant, unix_ms: i64, saved: SavedRegistrations, keep: impl Fn(&str) -> bool) -> usize {
        let mut taken = 0;
        for s in saved.bindings {
            let left_ms = s.expires_unix_ms.saturating_sub(unix_ms);
            if left_ms <= 0 || s.transport != Transport::Udp || s.contact.is_empty() || !keep(&s.number) {
                continue;
            }
            let left = Duration::from_millis(left_ms as u64).min(Duration::from_secs(self.max_expires.into()));
            let list = self.bindings.entry(s.number).or_default();
            if list.len() >= MAX_CONTACTS || list.iter().any(|b| same_contact(&b.contact, &s.contact)) {
                continue;
            }
            list.push(Binding {
                contact: s.contact,
                source: s.source,
                transport: s.transport,
                expires: now + left,
                call_id: s.call_id,
                cseq: s.cseq,
            });
            taken += 1;
        }
        taken
    }

    /// Apply a REGISTER for `aor` (already authenticated). `contacts` empty = a query.
    /// `wildcard` = `Contact: *`. Returns the current bindings to list in the 200 OK.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        now: Instant,
        aor: &str,
        contacts: &[ContactUpdate],
        wildcard: bool,
        header_expires: Option<u32>,
        source: SocketAddr,
        transport: Transport,
        call_id: &str,
        cseq: u32,
    ) -> Result<Vec<Binding>, RegisterError> {
        self.expire_aor(now, aor);
        if wildcard {
            if !contacts.is_empty() || header_expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            if let Some(list) = self.bindings.get(aor)
                && list.iter().any(|b| *b.call_id == *call_id && cseq <= b.cseq)
            {
                return Err(RegisterError::OutOfOrder(cseq));
            }
            if self.bindings.remove(aor).is_some() {
                self.changed = Change::Moved;
            }
            return Ok(vec![]);
        }
        // Check everything before changing anything.
        for c in contacts {
            if c.expires != 0 && c.expires < self.min_expires {
                return Err(RegisterError::TooBrief(self.min_expires));
            }
            if let Some(b) = self.bindings.get(aor).and_then(|l| l.iter().find(|b| same_contact(&b.contact, &c.contact)))
                && *b.call_id == *call_id
                && cseq <= b.cseq
            {
                return Err(RegisterError::OutOfOrder(cseq));
            }
        }
        // The key is allocated only for a new number (`entry` would want one every time).
        if !self.bindings.contains_key(aor) {
            self.bindings.insert(Arc::from(aor), Vec::new());
        }
        let list = self.bindings.get_mut(aor).expect("just inserted");
        let mut call_id_shared: Option<Arc<str>> = None;
        for c in contacts {
            let refresh = c.expires != 0
                && list.iter().any(|b| {
                    same_contact(&b.contact, &c.contact)
                        && *b.contact == *c.contact
                        && b.source == source
                        && b.transport == transport
                });
            self.changed = self.changed.max(if refresh { Change::Refreshed } else { Change::Moved });
            // A refresh keeps the text it had: no new allocation for the same strings.
            let mut contact = None;
            list.retain(|b| {
                if !same_contact(&b.contact, &c.contact) {
                    return true;
                }
                if *b.contact == *c.contact {
                    contact = Some(b.contact.clone());
                }
                if call_id_shared.is_none() && *b.call_id == *call_id {
                    call_id_shared = Some(b.call_id.clone());
                }
                false
            });
            if c.expires == 0 {
                continue;
            }
            let secs = c.expires.min(self.max_expires);
            list.push(Binding {
                contact: contact.unwrap_or_else(|| Arc::from(c.contact.as_str())),
                source,
                transport,
                expires: now + Duration::from_secs(secs as u64),
                call_id: call_id_shared.get_or_insert_with(|| Arc::from(call_id)).clone(),
                cseq,
            });
        }
        // Keep the newest few.
        if list.len() > MAX_CONTACTS {
            list.sort_by_key(|b| b.expires);
            let drop = list.len() - MAX_CONTACTS;
            list.drain(..drop);
        }
        let out = list.clone();
        if list.is_empty() {
            self.bindings.remove(aor);
        }
        Ok(out)
    }

    /// Live bindings of `aor`.
    pub fn lookup(&mut self, now: Instant, aor: &str) -> Vec<Binding> {
        self.expire_aor(now, aor);
        self.bindings.get(aor).cloned().unwrap_or_default()
    }

    pub fn is_registered(&mut self, now: Instant, aor: &str) -> bool {
        !self.lookup(now, aor).is_empty()
    }

    /// Forget a number entirely (it left this switch's phone list).
    pub fn remove_aor(&mut self, aor: &str) {
        if self.bindings.remove(aor).is_some() {
            self.changed = Change::Moved;
        }
    }

    pub fn registered_numbers(&self) -> usize {
        self.bindings.len()
    }

    /// Drop every expired binding.
    pub fn expire(&mut self, now: Instant) {
        self.bindings.retain(|_, l| {
            l.retain(|b| b.expires > now);
            !l.is_empty()
        });
    }

    fn expire_aor(&mut self, now: Instant, aor: &str) {
        if let Some(l) = self.bindings.get_mut(aor) {
            l.retain(|b| b.expires > now);
            if l.is_empty() {
                self.bindings.remove(aor);
            }
        }
    }
}

/// RFC 3261 §10.3 compares contact URIs with URI equality; phones re-send the same text, so a
/// case-insensitive comparison of the URI part (without display name and header params) does.
fn same_contact(a: &str, b: &str) -> bool {
    fn core(s: &str) -> &str {
        let s = s.trim();
        match (s.find('<'), s.find('>')) {
            (Some(i), Some(j)) if j > i => s.get(i + 1..j).unwrap_or(s),
            _ => s.split(';').next().unwrap_or(s),
        }
    }
    core(a).eq_ignore_ascii_case(core(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SocketAddr {
        "127.0.0.1:5062".parse().unwrap()
    }

    fn c(contact: &str, expires: u32) -> ContactUpdate {
        ContactUpdate { contact: contact.into(), expires }
    }

    #[test]
    fn register_expire_and_unregister() {
        let t = Instant::now();
        let mut r = Registrar::new(60, 3600);
        let b = r.register(t, "1001", &[c("<sip:1001@10.0.0.5:5062>", 120)], false, None, src(), Transport::Udp, "a", 1).unwrap();
        assert_eq!(b.len(), 1);
        assert!(r.is_registered(t + Duration::from_secs(119), "1001"));
        assert!(!r.is_registered(t + Duration::from_secs(120), "1001"));
        r.register(t, "1001", &[c("<sip:1001@10.0.0.5:5062>", 120)], false, None, src(), Transport::Udp, "a", 2).unwrap();
        let b = r.register(t, "1001", &[c("<sip:1001@10.0.0.5:5062>", 0)], false, None, src(), Transport::Udp, "a", 3).unwrap();
        assert!(b.is_empty());
        assert!(!r.is_registered(t, "1001"));
    }

    #[test]
    fn several_contacts_per_number_and_wildcard_removal() {
        let t = Instant::now();
        let mut r = Registrar::new(60, 3600);
        r.register(t, "1001", &[c("<sip:1001@a>", 600)], false, None, src(), Transport::Udp, "x", 1).unwrap();
        let b = r.register(t, "1001", &[c("<sip:1001@b>", 600)], false, None, src(), Transport::Tcp, "y", 1).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(r.register(t, "1001", &[], true, Some(1), src(), Transport::Udp, "z", 1), Err(RegisterError::BadWildcard));
        assert!(r.register(t, "1001", &[], true, Some(0), src(), Transport::Udp, "z", 1).unwrap().is_empty());
        assert!(!r.is_registered(t, "1001"));
    }

    #[test]
    fn out_of_order_and_too_brief_change_nothing() {
        let t = Instant::now();
        let mut r = Registrar::new(60, 3600);
        r.register(t, "1001", &[c("<sip:1001@a>", 600)], false, None, src(), Transport::Udp, "x", 5).unwrap();
        assert_eq!(
            r.register(t, "1001", &[c("<sip:1001@a>", 0)], false, None, src(), Transport::Udp, "x", 5),
            Err(RegisterError::OutOfOrder(5))
        );
        assert_eq!(
            r.register(t, "1001", &[c("<sip:1001@b>", 30)], false, None, src(), Transport::Udp, "x", 6),
            Err(RegisterError::TooBrief(60))
        );
        assert_eq!(r.lookup(t, "1001").len(), 1);
    }

    #[test]
    fn long_intervals_are_clamped() {
        let t = Instant::now();
        let mut r = Registrar::new(60, 3600);
        let b = r.register(t, "1001", &[c("sip:1001@a", 999_999)], false, None, src(), Transport::Udp, "x", 1).unwrap();
        assert_eq!(b[0].expires, t + Duration::from_secs(3600));
    }

    #[test]
    fn saved_bindings_come_back_in_a_new_registrar_with_the_time_they_had_left() {
        let t = Instant::now();
        let unix_ms = 1_700_000_000_000;
        let mut r = Registrar::new(60, 3600);
        assert_eq!(r.take_changed(), Change::None);
        r.register(t, "1001", &[c("<sip:1001@10.0.0.5:5062>", 600)], false, None, src(), Transport::Udp, "a", 7).unwrap();
        r.register(t, "1002", &[c("<sip:1002@10.0.0.6:5062;transport=tcp>", 120)], false, None, src(), Transport::Tcp, "b", 1)
            .unwrap();
        r.register(t, "1003", &[c("<sips:1003@10.0.0.7>", 600)], false, None, src(), Transport::Tls, "c", 1).unwrap();
        assert_eq!(r.take_changed(), Change::Moved, "a REGISTER that adds bindings");
        assert_eq!(r.take_changed(), Change::None);
        let mut saved = r.snapshot(t + Duration::from_secs(60), unix_ms);
        saved.bindings.sort_by(|a, b| a.number.cmp(&b.number));
        assert_eq!(saved.bindings.len(), 3);
        assert_eq!(&*saved.bindings[0].number, "1001");
        assert_eq!(saved.bindings[0].expires_unix_ms, unix_ms + 540_000);
        let json = serde_json::to_string(&saved).unwrap();
        let saved: SavedRegistrations = serde_json::from_str(&json).unwrap();

        // The new process starts 40 s of wall time later, with its own clock.
        let t2 = t + Duration::from_secs(5000);
        let mut fresh = Registrar::new(60, 3600);
        let taken = fresh.restore(t2, unix_ms + 40_000, saved.clone(), |_| true);
        assert_eq!(taken, 1, "the TCP and TLS bindings are not taken: their connections are gone");
        let b = fresh.lookup(t2, "1001");
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].source, b[0].transport, &*b[0].call_id, b[0].cseq), (src(), Transport::Udp, "a", 7));
        assert_eq!(b[0].expires, t2 + Duration::from_secs(500));
        assert!(!fresh.is_registered(t2, "1002"));
        assert!(!fresh.is_registered(t2, "1003"));
        // The same REGISTER's retransmission is still refused as out of order after the restart.
        assert_eq!(
            fresh.register(t2, "1001", &[c("<sip:1001@10.0.0.5:5062>", 0)], false, None, src(), Transport::Udp, "a", 7),
            Err(RegisterError::OutOfOrder(7))
        );

        // Expired in the meantime, or no longer this switch's phone: not taken.
        let mut later = Registrar::new(60, 3600);
        assert_eq!(later.restore(t2, unix_ms + 600_000, saved.clone(), |_| true), 0);
        let mut other = Registrar::new(60, 3600);
        assert_eq!(other.restore(t2, unix_ms, saved.clone(), |n| n != "1001"), 0);
        // A registrar with a shorter maximum clamps what it takes.
        let mut short = Registrar::new(60, 300);
        short.restore(t2, unix_ms, saved, |_| true);
        assert_eq!(short.lookup(t2, "1001")[0].expires, t2 + Duration::from_secs(300));
        assert_eq!(short.take_changed(), Change::None, "restoring is not a change to save again");
    }

    #[test]
    fn a_refresh_from_where_the_phone_was_is_not_a_move_and_refusals_change_nothing() {
        let t = Instant::now();
        let mut r = Registrar::new(60, 3600);
        r.register(t, "1001", &[c("<sip:1001@a>", 600)], false, None, src(), Transport::Udp, "x", 1).unwrap();
        assert_eq!(r.take_changed(), Change::Moved);
        r.register(t, "1001", &[c("<sip:1001@a>", 600)], false, None, src(), Transport::Udp, "x", 2).unwrap();
        assert_eq!(r.take_changed(), Change::Refreshed);
        let elsewhere: SocketAddr = "127.0.0.1:5099".parse().unwrap();
        r.register(t, "1001", &[c("<sip:1001@a>", 600)], false, None, elsewhere, Transport::Udp, "x", 3).unwrap();
        assert_eq!(r.take_changed(), Change::Moved, "the phone now sends from another port");
        assert!(r.register(t, "1001", &[c("<sip:1001@b>", 30)], false, None, src(), Transport::Udp, "x", 4).is_err());
        assert_eq!(r.take_changed(), Change::None, "a refused REGISTER changes nothing");
        r.register(t, "1001", &[], false, None, src(), Transport::Udp, "x", 5).unwrap();
        assert_eq!(r.take_changed(), Change::None, "a query changes nothing");
        r.register(t, "1001", &[c("<sip:1001@a>", 0)], false, None, elsewhere, Transport::Udp, "x", 6).unwrap();
        assert_eq!(r.take_changed(), Change::Moved, "an unregistration");
        r.remove_aor("1001");
        assert_eq!(r.take_changed(), Change::None, "nothing left to remove");
    }
}

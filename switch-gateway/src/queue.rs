//! The call-waiting queue with one-time keys (claims 8–10), sans-IO.
//!
//! C12: when the cloud asks whether a callee accepts, the gateway puts the call here and hands
//! out a key. C14: whoever connects (over WebRTC, on its DataChannel) must present that key for
//! that call, as the identity the key was issued to, before its TTL runs out, and only once.
//! Everything else is refused with a typed [`KeyError`] and changes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::rngs::StdRng;
use trunkline_protocol::ErrorCode;

/// One waiting call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub call_id: String,
    /// Who may present the key (the caller's number, or the switchless callee's in C3).
    pub presenter: String,
    /// The local desk phone the call is for (C11/C12), or the phone that placed it (C3).
    pub phone: String,
    pub direction: Direction,
    pub expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// C11/C12: someone elsewhere calls our phone.
    Inbound,
    /// B6/C3: our phone calls a switchless browser, which will connect here.
    Outbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no call is waiting with that key")]
    BadKey,
    #[error("the key has expired")]
    Expired,
    #[error("the key was already used")]
    Used,
    #[error("the key was issued to another caller")]
    WrongCaller,
}

impl KeyError {
    pub fn code(self) -> ErrorCode {
        match self {
            KeyError::BadKey => ErrorCode::BadKey,
            KeyError::Expired => ErrorCode::KeyExpired,
            KeyError::Used => ErrorCode::KeyUsed,
            KeyError::WrongCaller => ErrorCode::WrongCaller,
        }
    }
}

#[derive(Debug)]
enum Slot {
    Waiting {
        key: String,
        entry: Entry,
    },
    /// Spent or expired keys are remembered for a while so a replay gets a precise answer.
    Spent {
        key: String,
        until: Instant,
        expired: bool,
    },
}

/// The waiting queue, keyed by call id.
pub struct WaitingQueue {
    ttl: Duration,
    slots: HashMap<String, Slot>,
    new_key: Box<dyn FnMut() -> String + Send>,
}

/// How long a spent key is remembered (to answer `key_used` rather than `bad_key`).
const REMEMBER_SPENT: Duration = Duration::from_secs(120);

impl WaitingQueue {
    pub fn new(ttl: Duration, new_key: Box<dyn FnMut() -> String + Send>) -> Self {
        WaitingQueue { ttl, slots: HashMap::new(), new_key }
    }

    /// A queue with keys of 128 bits drawn from `rng` (a CSPRNG the driver seeded from the OS;
    /// a fixed seed in tests).
    pub fn with_rng(ttl: Duration, mut rng: StdRng) -> Self {
        Self::new(ttl, Box::new(move || new_key(&mut rng)))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Calls currently waiting.
    pub fn waiting(&self) -> usize {
        self.slots.values().filter(|s| matches!(s, Slot::Waiting { .. })).count()
    }

    /// Is a call waiting for `phone` (it is about to ring, so it counts as busy)?
    pub fn has_call_for(&self, phone: &str) -> bool {
        self.slots.values().any(|s| matches!(s, Slot::Waiting { entry, .. } if entry.phone == phone))
    }

    /// The call ids of the calls waiting (listed to the cloud at sign-in).
    pub fn waiting_ids(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter(|(_, s)| matches!(s, Slot::Waiting { .. })).map(|(id, _)| id.as_str())
    }

    pub fn is_waiting(&self, call_id: &str) -> bool {
        matches!(self.slots.get(call_id), Some(Slot::Waiting { .. }))
    }

    /// C12: queue `call_id` for `presenter` and return its key. A call id that is already
    /// queued keeps its entry and gets `None`.
    pub fn insert(&mut self, now: Instant, call_id: &str, presenter: &str, phone: &str, direction: Direction) -> Option<String> {
        if self.slots.contains_key(call_id) {
            return None;
        }
        let key = (self.new_key)();
        let entry = Entry {
            call_id: call_id.to_string(),
            presenter: presenter.to_string(),
            phone: phone.to_string(),
            direction,
            expires: now + self.ttl,
        };
        self.slots.insert(call_id.to_string(), Slot::Waiting { key: key.clone(), entry });
        Some(key)
    }

    /// C14, claim 10: check a presented key. On success the entry leaves the queue and the key
    /// is spent.
    pub fn take(&mut self, now: Instant, call_id: &str, key: &str, presenter: &str) -> Result<Entry, KeyError> {
        match self.slots.get(call_id) {
            None => Err(KeyError::BadKey),
            Some(Slot::Spent { key: k, expired, .. }) => {
                if !ct_eq(k, key) {
                    Err(KeyError::BadKey)
                } else if *expired {
                    Err(KeyError::Expired)
                } else {
                    Err(KeyError::Used)
                }
            }
            Some(Slot::Waiting { key: k, entry }) => {
                if !ct_eq(k, key) {
                    return Err(KeyError::BadKey);
                }
                if now >= entry.expires {
                    let k = k.clone();
                    self.slots.insert(call_id.to_string(), Slot::Spent { key: k, until: now + REMEMBER_SPENT, expired: true });
                    return Err(KeyError::Expired);
                }
                if entry.presenter != presenter {
                    // Not spent: the rightful caller may still come.
                    return Err(KeyError::WrongCaller);
                }
                let k = k.clone();
                let Some(Slot::Waiting { entry, .. }) =
                    self.slots.insert(call_id.to_string(), Slot::Spent { key: k, until: now + REMEMBER_SPENT, expired: false })
                else {
                    unreachable!("checked above")
                };
                Ok(entry)
            }
        }
    }

    /// Drop a waiting entry (the cloud said the attempt is over). Returns it if it was waiting.
    pub fn cancel(&mut self, now: Instant, call_id: &str) -> Option<Entry> {
        match self.slots.remove(call_id) {
            Some(Slot::Waiting { key, entry }) => {
                self.slots.insert(call_id.to_string(), Slot::Spent { key, until: now + REMEMBER_SPENT, expired: true });
                Some(entry)
            }
            Some(spent) => {
                self.slots.insert(call_id.to_string(), spent);
                None
            }
            None => None,
        }
    }

    /// Expire entries whose TTL passed; returns them (so the gateway can report the outcome).
    pub fn expire(&mut self, now: Instant) -> Vec<Entry> {
        let mut gone = vec![];
        let ids: Vec<String> = self.slots.keys().cloned().collect();
        for id in ids {
            match self.slots.get(&id) {
                Some(Slot::Waiting { entry, .. }) if now >= entry.expires => {
                    if let Some(Slot::Waiting { key, entry }) = self.slots.remove(&id) {
                        self.slots.insert(id, Slot::Spent { key, until: now + REMEMBER_SPENT, expired: true });
                        gone.push(entry);
                    }
                }
                Some(Slot::Spent { until, .. }) if now >= *until => {
                    self.slots.remove(&id);
                }
                _ => {}
            }
        }
        gone
    }

    /// The next instant [`WaitingQueue::expire`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .values()
            .map(|s| match s {
                Slot::Waiting { entry, .. } => entry.expires,
                Slot::Spent { until, .. } => *until,
            })
            .min()
    }
}

/// 128 bits from `rng`, unpadded base64url (22 characters).
pub fn new_key(rng: &mut impl RngCore) -> String {
    use base64::Engine as _;
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> WaitingQueue {
        let mut n = 0;
        WaitingQueue::new(
            Duration::from_secs(30),
            Box::new(move || {
                n += 1;
                format!("key-{n:020}")
            }),
        )
    }

    #[test]
    fn claim_10_key_accepted_once_then_used() {
        let t = Instant::now();
        let mut q = q();
        let key = q.insert(t, "c1", "2001", "1001", Direction::Inbound).unwrap();
        assert_eq!(q.waiting(), 1);
        let e = q.take(t, "c1", &key, "2001").unwrap();
        assert_eq!((e.phone.as_str(), e.direction), ("1001", Direction::Inbound));
        assert_eq!(q.take(t, "c1", &key, "2001"), Err(KeyError::Used));
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn late_forged_foreign_and_other_call_keys_are_refused() {
        let t = Instant::now();
        let mut q = q();
        let k1 = q.insert(t, "c1", "2001", "1001", Direction::Inbound).unwrap();
        let k2 = q.insert(t, "c2", "2002", "1002", Direction::Inbound).unwrap();
        assert_eq!(q.take(t, "c1", "forged-key-forged-key-00", "2001"), Err(KeyError::BadKey));
        assert_eq!(q.take(t, "c1", &k2, "2001"), Err(KeyError::BadKey), "key of another call");
        assert_eq!(q.take(t, "nope", &k1, "2001"), Err(KeyError::BadKey));
        assert_eq!(q.take(t, "c1", &k1, "2666"), Err(KeyError::WrongCaller));
        // None of that spent the key.
        assert!(q.is_waiting("c1"));
        let later = t + Duration::from_secs(30);
        assert_eq!(q.take(later, "c1", &k1, "2001"), Err(KeyError::Expired));
        assert_eq!(q.take(later, "c1", &k1, "2001"), Err(KeyError::Expired));
    }

    #[test]
    fn entries_expire_with_the_ttl_and_are_reported_once() {
        let t = Instant::now();
        let mut q = q();
        q.insert(t, "c1", "2001", "1001", Direction::Outbound).unwrap();
        assert_eq!(q.poll_timeout(), Some(t + Duration::from_secs(30)));
        assert!(q.expire(t + Duration::from_secs(29)).is_empty());
        let gone = q.expire(t + Duration::from_secs(30));
        assert_eq!(gone.len(), 1);
        assert!(q.expire(t + Duration::from_secs(31)).is_empty());
        // Remembered spent keys are eventually forgotten too.
        q.expire(t + Duration::from_secs(30) + REMEMBER_SPENT);
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn duplicate_call_ids_keep_the_first_entry() {
        let t = Instant::now();
        let mut q = q();
        let k = q.insert(t, "c1", "2001", "1001", Direction::Inbound).unwrap();
        assert_eq!(q.insert(t, "c1", "2666", "1001", Direction::Inbound), None);
        assert!(q.take(t, "c1", &k, "2001").is_ok());
    }

    #[test]
    fn cancelled_entries_refuse_their_key() {
        let t = Instant::now();
        let mut q = q();
        let k = q.insert(t, "c1", "2001", "1001", Direction::Inbound).unwrap();
        assert!(q.cancel(t, "c1").is_some());
        assert_eq!(q.take(t, "c1", &k, "2001"), Err(KeyError::Expired));
    }

    #[test]
    fn keys_are_128_bit_and_distinct() {
        use rand::SeedableRng;
        let mut rng = StdRng::from_seed([3; 32]);
        let a = new_key(&mut rng);
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_key(&mut rng));
        assert!(trunkline_protocol::check_key(&a).is_ok());
    }
}

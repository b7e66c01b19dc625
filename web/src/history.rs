//! Call history: the server's call records (`history` → `history`), merged with the calls this
//! browser saw itself (kept in localStorage, so the list shows at once and offline), newest
//! first. Plain Rust.

use serde::{Deserialize, Serialize};

#[cfg(test)]
use trunkline_call::format_duration;
use trunkline_call::{Call, Direction};

/// Entries kept per account.
pub const MAX_ENTRIES: usize = 50;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub call_id: String,
    /// true: we called; false: we were called.
    pub outgoing: bool,
    pub number: String,
    #[serde(default)]
    pub name: String,
    /// Start, ms since the Unix epoch.
    pub at_ms: f64,
    /// The outcome line as shown when the call ended ("Busy", "Call ended · 01:02", …).
    pub result: String,
    /// Connected time, when it was answered.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

impl Entry {
    /// The entry for a finished call; `epoch_offset` turns the call's clock into epoch ms.
    pub fn from_call(call: &Call, epoch_offset: f64) -> Entry {
        Entry {
            call_id: call.call_id.clone(),
            outgoing: call.direction == Direction::Outgoing,
            number: call.remote.clone(),
            name: call.remote_name.clone(),
            at_ms: call.started_at + epoch_offset,
            result: call.outcome_line().unwrap_or_default(),
            duration_ms: call.connected_at.and(call.duration()),
        }
    }

    /// An entry from the server's record of a call `me` took part in.
    pub fn from_record(r: &trunkline_protocol::CallSummary, me: &str) -> Entry {
        let outgoing = r.caller == me;
        let direction = if outgoing { Direction::Outgoing } else { Direction::Incoming };
        let result = match (r.outcome, r.duration_ms) {
            (trunkline_protocol::Outcome::Connected, Some(d)) => format!("Call ended · {}", trunkline_call::format_duration(d)),
            (o, _) => trunkline_call::outcome_text(o, direction).to_string(),
        };
        Entry {
            call_id: r.call_id.clone(),
            outgoing,
            number: if outgoing { r.callee.clone() } else { r.caller.clone() },
            name: String::new(),
            at_ms: r.started_ms as f64,
            result,
            duration_ms: r.duration_ms,
        }
    }

    pub fn arrow(&self) -> &'static str {
        if self.outgoing { "↗" } else { "↙" }
    }
}

/// Add or replace (same call id) an entry, newest first, at most [`MAX_ENTRIES`].
pub fn record(list: &mut Vec<Entry>, entry: Entry) {
    list.retain(|e| e.call_id != entry.call_id);
    list.insert(0, entry);
    list.sort_by(|a, b| b.at_ms.total_cmp(&a.at_ms));
    list.truncate(MAX_ENTRIES);
}

pub fn encode(list: &[Entry]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// Anything unreadable is an empty history.
pub fn decode(text: &str) -> Vec<Entry> {
    serde_json::from_str(text).unwrap_or_default()
}

/// The localStorage key of an account's history.
pub fn storage_key(number: &str) -> String {
    format!("trunkline.history.{number}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_call::{Input, UserAction};
    use trunkline_protocol::{Outcome, ServerMsg};

    #[test]
    fn finished_calls_become_entries_newest_first() {
        let (mut c, _) = Call::dial("a".into(), "2001".into(), "1001".into(), 1000.0);
        c.on(Input::Cloud(ServerMsg::Outcome { call_id: "a".into(), outcome: Outcome::Busy, duration_ms: None }), 2000.0);
        let busy = Entry::from_call(&c, 1_700_000_000_000.0);
        assert_eq!(busy.result, "Busy");
        assert!(busy.outgoing);
        assert_eq!(busy.duration_ms, None);

        let (mut c, _) = Call::dial("b".into(), "2001".into(), "2002".into(), 5000.0);
        c.on(Input::Cloud(ServerMsg::Peer { call_id: "b".into(), key: "k".repeat(22) }), 5100.0);
        c.on(Input::Cloud(ServerMsg::CallEvent { call_id: "b".into(), event: trunkline_protocol::CallEvent::Connected }), 6000.0);
        c.on(Input::MediaUp, 6000.0);
        c.on(Input::User(UserAction::Hangup), 71_000.0);
        let talked = Entry::from_call(&c, 1_700_000_000_000.0);
        assert_eq!(talked.duration_ms.map(format_duration).as_deref(), Some("01:05"));
        assert_eq!(talked.result, "Call ended · 01:05");

        let mut list = vec![];
        record(&mut list, busy.clone());
        record(&mut list, talked.clone());
        assert_eq!(list[0].call_id, "b");
        // The cloud's outcome refines an entry in place.
        let mut refined = talked.clone();
        refined.duration_ms = Some(65_100);
        record(&mut list, refined);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].duration_ms, Some(65_100));
        assert_eq!(decode(&encode(&list)), list);
        assert!(decode("not json").is_empty());
        for i in 0..80 {
            let mut e = busy.clone();
            e.call_id = format!("x{i}");
            e.at_ms += i as f64;
            record(&mut list, e);
        }
        assert_eq!(list.len(), MAX_ENTRIES);
    }
}

#[cfg(test)]
mod server_record_tests {
    use super::*;
    use trunkline_protocol::{CallSummary, Outcome};

    #[test]
    fn server_records_become_entries_from_my_side() {
        let r = CallSummary {
            call_id: "c".into(),
            caller: "2001".into(),
            callee: "1001".into(),
            started_ms: 1000,
            ended_ms: 63_000,
            outcome: Outcome::Connected,
            duration_ms: Some(62_000),
        };
        let mine = Entry::from_record(&r, "2001");
        assert!(mine.outgoing);
        assert_eq!((mine.number.as_str(), mine.result.as_str()), ("1001", "Call ended · 01:02"));
        let theirs = Entry::from_record(&CallSummary { outcome: Outcome::NoAnswer, duration_ms: None, ..r }, "1001");
        assert!(!theirs.outgoing);
        assert_eq!((theirs.number.as_str(), theirs.result.as_str()), ("2001", "Missed call"));
    }
}

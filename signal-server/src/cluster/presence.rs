//! Who is connected where, as this replica sees it: the presence bucket's entries filtered by
//! the live leases. Sans-IO: the runtime feeds it KV entries and lease changes, it returns what
//! the steering engine must be told.
//!
//! An entry counts only while its replica holds a live lease *with the same incarnation*: a
//! replica that died (or fenced and came back) leaves entries behind that nobody deletes, and
//! they must not keep its parties "online".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use trunkline_protocol::CallId;

use crate::steering::{NodeId, Party};

/// The value of a presence entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node: NodeId,
    pub incarnation: String,
    /// A switch's `switch_auth.calls`: the calls it still carries (see `Engine::reconcile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallId>>,
}

/// What the engine must be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `Engine::remote_online`.
    Online { party: Party, node: NodeId, calls: Option<Vec<CallId>> },
    /// `Engine::remote_offline`.
    Offline { party: Party, node: NodeId },
}

pub struct PresenceView {
    me: NodeId,
    entries: HashMap<Party, Entry>,
    live: HashMap<NodeId, String>,
    /// Where the engine was last told each party is.
    told: HashMap<Party, NodeId>,
}

impl PresenceView {
    pub fn new(me: &str) -> PresenceView {
        PresenceView { me: me.to_string(), entries: HashMap::new(), live: HashMap::new(), told: HashMap::new() }
    }

    /// An entry was written (a party signed in on `entry.node`).
    pub fn put(&mut self, party: Party, entry: Entry) -> Vec<Change> {
        self.entries.insert(party.clone(), entry);
        self.settle(&party, true).into_iter().collect()
    }

    /// An entry was deleted (its party left its replica).
    pub fn delete(&mut self, party: &Party) -> Vec<Change> {
        self.entries.remove(party);
        self.settle(party, false).into_iter().collect()
    }

    /// The live leases now (node → incarnation).
    pub fn set_live(&mut self, live: HashMap<NodeId, String>) -> Vec<Change> {
        self.live = live;
        let parties: Vec<Party> = self.entries.keys().chain(self.told.keys()).cloned().collect();
        let mut seen = std::collections::HashSet::new();
        parties.into_iter().filter(|p| seen.insert(p.clone())).filter_map(|p| self.settle(&p, false)).collect()
    }

    /// Forget everything (the replica fenced; it starts over with a fresh snapshot).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.told.clear();
        self.live.clear();
    }

    /// Parties on other replicas, as told to the engine.
    pub fn remote_count(&self) -> usize {
        self.told.len()
    }

    /// Where `party` is now, if on another live replica.
    fn effective(&self, party: &Party) -> Option<&Entry> {
        let e = self.entries.get(party)?;
        (e.node != self.me && self.live.get(&e.node) == Some(&e.incarnation)).then_some(e)
    }

    /// Tell the engine what changed for `party`; `fresh`: its entry was just written (a new
    /// sign-in on the same replica is news too: the switch's call list, a wake-up).
    fn settle(&mut self, party: &Party, fresh: bool) -> Option<Change> {
        let now = self.effective(party).cloned();
        let before = self.told.get(party).cloned();
        match (before, now) {
            (None, None) => None,
            (Some(old), None) => {
                self.told.remove(party);
                Some(Change::Offline { party: party.clone(), node: old })
            }
            (old, Some(e)) => {
                if old.as_ref() == Some(&e.node) && !fresh {
                    return None;
                }
                self.told.insert(party.clone(), e.node.clone());
                Some(Change::Online { party: party.clone(), node: e.node, calls: e.calls })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, inc: &str) -> Entry {
        Entry { node: node.into(), incarnation: inc.into(), calls: None }
    }
    fn live(pairs: &[(&str, &str)]) -> HashMap<NodeId, String> {
        pairs.iter().map(|(n, i)| (n.to_string(), i.to_string())).collect()
    }
    fn bob() -> Party {
        Party::Device("2002".into())
    }

    #[test]
    fn entries_of_live_replicas_only_and_moves_are_one_online() {
        let mut v = PresenceView::new("r1");
        assert!(v.set_live(live(&[("r1", "a"), ("r2", "b")])).is_empty());
        assert_eq!(v.put(bob(), entry("r2", "b")), vec![Change::Online { party: bob(), node: "r2".into(), calls: None }]);
        // An entry of a dead incarnation (r3 is not live) hides nothing: bob goes offline.
        assert_eq!(v.put(bob(), entry("r3", "old")), vec![Change::Offline { party: bob(), node: "r2".into() }]);
        // r3 comes (back) with that incarnation: bob is there.
        assert_eq!(
            v.set_live(live(&[("r1", "a"), ("r2", "b"), ("r3", "old")])),
            vec![Change::Online { party: bob(), node: "r3".into(), calls: None }]
        );
        // Moving to r2 is one Online (calls carry on), not an Offline first.
        assert_eq!(v.put(bob(), entry("r2", "b")), vec![Change::Online { party: bob(), node: "r2".into(), calls: None }]);
        // r2's lease lapses: bob is offline.
        assert_eq!(v.set_live(live(&[("r1", "a"), ("r3", "old")])), vec![Change::Offline { party: bob(), node: "r2".into() }]);
        assert_eq!(v.remote_count(), 0);
    }

    #[test]
    fn own_entries_are_not_remote_and_deletes_go_offline() {
        let mut v = PresenceView::new("r1");
        v.set_live(live(&[("r1", "a"), ("r2", "b")]));
        assert!(v.put(bob(), entry("r1", "a")).is_empty());
        assert_eq!(v.put(bob(), entry("r2", "b")).len(), 1);
        assert_eq!(v.delete(&bob()), vec![Change::Offline { party: bob(), node: "r2".into() }]);
        assert!(v.delete(&bob()).is_empty());
        // A switch's re-sign-in on the same replica is news (its call list).
        let hq = Party::Switch("hq".into());
        let with_calls = Entry { calls: Some(vec!["c1".into()]), ..entry("r2", "b") };
        assert_eq!(v.put(hq.clone(), with_calls.clone()).len(), 1);
        assert_eq!(
            v.put(hq.clone(), with_calls),
            vec![Change::Online { party: hq, node: "r2".into(), calls: Some(vec!["c1".into()]) }]
        );
    }
}

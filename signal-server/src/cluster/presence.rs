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

#[derive(Default)]
pub struct PresenceView {
    me: NodeId,
    entries: HashMap<Party, Entry>,
    live: HashMap<NodeId, String>,
    /// Where the engine was last told each party is.
    told: HashMap<Party, NodeId>,
    /// The newest revision seen per party: rows at or below it are old news.
    seen: HashMap<Party, i64>,
    /// Parties signed in on this replica, with their row's revision (`None` while it is being
    /// written). An older row from elsewhere must not take a newer local sign-in away.
    local: HashMap<Party, Option<i64>>,
    /// Rows of a party that arrived while its local row was being written.
    held: HashMap<Party, Vec<(i64, Option<Entry>)>>,
    /// Replica incarnations named by fresh rows but not in the live set: a replica that just
    /// joined, which this view's last live read predates. Their parties stay as the engine was
    /// told (no Offline blip for a party that merely moved) until a live read begun after the
    /// row (stamp greater than the one kept here) settles it.
    unknown: HashMap<(NodeId, String), u64>,
    /// Live reads begun, and the stamp of the newest one applied (older ones are dropped).
    reads_begun: u64,
    read_applied: u64,
    /// A fresh row named an unknown replica: the runtime should read the live set now.
    wants_live: bool,
}

impl PresenceView {
    pub fn new(me: &str) -> PresenceView {
        PresenceView { me: me.to_string(), ..Default::default() }
    }

    /// A presence row (`entry`: where `party` signed in; `None`: it left) at revision `rev`.
    /// Old revisions, and rows older than the party's sign-in here, change nothing; rows that
    /// arrive while that sign-in's own row is being written wait for its revision.
    pub fn row(&mut self, party: Party, rev: i64, entry: Option<Entry>) -> Vec<Change> {
        if self.seen.get(&party).is_some_and(|&s| s >= rev) {
            return vec![];
        }
        self.seen.insert(party.clone(), rev);
        match self.local.get(&party) {
            Some(None) => {
                self.held.entry(party).or_default().push((rev, entry));
                return vec![];
            }
            Some(Some(lr)) if rev <= *lr => return vec![],
            Some(Some(_)) if entry.as_ref().is_some_and(|e| e.node != self.me) => {
                // Signed in elsewhere after its sign-in here: the engine replaces it.
                self.local.remove(&party);
            }
            _ => {}
        }
        if let Some(e) = &entry
            && e.node != self.me
            && self.live.get(&e.node) != Some(&e.incarnation)
        {
            self.unknown.insert((e.node.clone(), e.incarnation.clone()), self.reads_begun);
            self.wants_live = true;
        }
        self.apply(party, entry)
    }

    /// A row its replica announced just now (the presence broadcast, sent right after that
    /// replica wrote it while a member): that replica counts as live at once, so a party
    /// moving to a replica that joined after the last live read is reachable there without
    /// waiting for the read it triggers. The read still decides: one begun after this row
    /// that does not list the replica takes the party offline.
    pub fn announced(&mut self, party: Party, rev: i64, entry: Option<Entry>) -> Vec<Change> {
        let fresh = self.seen.get(&party).is_none_or(|&s| s < rev);
        if fresh
            && let Some(e) = &entry
            && e.node != self.me
            && self.live.get(&e.node) != Some(&e.incarnation)
        {
            self.unknown.insert((e.node.clone(), e.incarnation.clone()), self.reads_begun);
            self.wants_live = true;
            self.live.insert(e.node.clone(), e.incarnation.clone());
        }
        self.row(party, rev, entry)
    }

    /// Did a row since the last call name a replica this view does not know as live? Then the
    /// live set should be read now rather than at the next lease tick.
    pub fn take_wants_live(&mut self) -> bool {
        std::mem::take(&mut self.wants_live)
    }

    /// A read of the live leases is about to start: its stamp for `live_read`.
    pub fn begin_live_read(&mut self) -> u64 {
        self.reads_begun += 1;
        self.reads_begun
    }

    fn apply(&mut self, party: Party, entry: Option<Entry>) -> Vec<Change> {
        match entry {
            Some(e) => self.put(party, e),
            None => self.delete(&party),
        }
    }

    /// `party` just signed in on this replica; its row is being written.
    pub fn local_pending(&mut self, party: &Party) {
        self.local.insert(party.clone(), None);
        self.held.remove(party);
        // The sign-in here supersedes any row of an earlier sign-in elsewhere (the engine has
        // the party as local now). A stale entry left here would come back to life as
        // "online elsewhere" when its replica's lease shows up in the live set, and replace the
        // local connection.
        self.entries.remove(party);
        self.told.remove(party);
    }

    /// The row of `party`'s sign-in here was written at `rev`: rows held meanwhile that are
    /// newer go through now.
    pub fn local_rev(&mut self, party: &Party, rev: i64) -> Vec<Change> {
        match self.local.get_mut(party) {
            Some(slot @ None) => *slot = Some(rev),
            // It left (or was replaced) meanwhile.
            _ => return vec![],
        }
        let held = self.held.remove(party).unwrap_or_default();
        let mut out = vec![];
        for (r, e) in held {
            if r > rev {
                if e.as_ref().is_some_and(|e| e.node != self.me) {
                    self.local.remove(party);
                }
                out.extend(self.apply(party.clone(), e));
            }
        }
        out
    }

    /// `party`'s connection here closed.
    pub fn local_gone(&mut self, party: &Party) {
        self.local.remove(party);
        self.held.remove(party);
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

    /// Would the read stamped `stamp` be applied (no newer one was)?
    pub fn is_newer_read(&self, stamp: u64) -> bool {
        stamp > self.read_applied
    }

    /// The live leases (node → incarnation) as read by the read stamped `stamp`. A read that
    /// finishes after a newer one is old news.
    pub fn live_read(&mut self, stamp: u64, live: HashMap<NodeId, String>) -> Vec<Change> {
        if !self.is_newer_read(stamp) {
            return vec![];
        }
        self.read_applied = stamp;
        // A read begun after a row settles that row's replica: live now, or dead.
        self.unknown.retain(|_, begun_before| stamp <= *begun_before);
        self.set_live(live)
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
        // Reads begun before the reset describe the old membership: their stamps stay spent.
        let begun = self.reads_begun;
        *self = PresenceView { reads_begun: begun, read_applied: begun, ..PresenceView::new(&self.me) };
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
        // Named by a row but not (or no longer, after an older read) in the live set: wait for
        // the read that settles it.
        if self.entries.get(party).is_some_and(|e| {
            self.unknown.contains_key(&(e.node.clone(), e.incarnation.clone())) && self.live.get(&e.node) != Some(&e.incarnation)
        }) {
            return None;
        }
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
    fn an_older_row_from_elsewhere_does_not_take_a_newer_local_sign_in_away() {
        let mut v = PresenceView::new("r3");
        v.set_live(live(&[("r1", "a"), ("r3", "c")]));
        // Bob signs in here; r1's older row (its earlier sign-in there) arrives before ours is written.
        v.local_pending(&bob());
        assert!(v.row(bob(), 1, Some(entry("r1", "a"))).is_empty());
        assert!(v.local_rev(&bob(), 2).is_empty(), "rev 1 is older than the sign-in here");
        assert!(v.row(bob(), 1, Some(entry("r1", "a"))).is_empty());
        // r1's "left" (rev 3, its old connection closing) says nothing about bob here.
        assert_eq!(v.row(bob(), 3, None), vec![]);
        // A newer sign-in elsewhere does move it (the engine replaces the local connection).
        assert_eq!(
            v.row(bob(), 4, Some(entry("r1", "a"))),
            vec![Change::Online { party: bob(), node: "r1".into(), calls: None }]
        );
        // Held rows newer than the local one go through when its revision is known.
        let mut w = PresenceView::new("r3");
        w.set_live(live(&[("r1", "a"), ("r3", "c")]));
        w.local_pending(&bob());
        assert!(w.row(bob(), 9, Some(entry("r1", "a"))).is_empty());
        assert_eq!(w.local_rev(&bob(), 5), vec![Change::Online { party: bob(), node: "r1".into(), calls: None }]);
    }

    #[test]
    fn a_stale_entry_of_a_replica_not_yet_live_does_not_replace_a_local_sign_in_when_that_replica_shows_up() {
        // Seen on r2: r1's lease was not in r2's first live set, so hq's row from r1 was kept
        // without telling the engine; hq then moved to r2; r1's lease appeared a moment later.
        let hq = Party::Switch("hq".into());
        let mut v = PresenceView::new("r2");
        v.set_live(live(&[("r2", "b"), ("r3", "c")]));
        assert!(v.row(hq.clone(), 1, Some(entry("r1", "a"))).is_empty(), "r1 is not live yet");
        v.local_pending(&hq);
        assert!(v.local_rev(&hq, 3).is_empty());
        assert!(v.row(hq.clone(), 3, Some(entry("r2", "b"))).is_empty());
        assert!(v.set_live(live(&[("r1", "a"), ("r2", "b"), ("r3", "c")])).is_empty(), "hq is here, not on r1");
        assert!(v.set_live(live(&[("r2", "b"), ("r3", "c")])).is_empty());
        // Told online elsewhere before the local sign-in: no Offline later either (the engine
        // already has it here).
        let mut w = PresenceView::new("r2");
        w.set_live(live(&[("r1", "a"), ("r2", "b")]));
        assert_eq!(w.row(hq.clone(), 1, Some(entry("r1", "a"))).len(), 1);
        w.local_pending(&hq);
        assert!(w.local_rev(&hq, 2).is_empty());
        assert!(w.set_live(live(&[("r2", "b")])).is_empty());
        assert_eq!(w.remote_count(), 0);
    }

    #[test]
    fn a_party_moving_to_a_replica_that_joined_after_the_last_live_read_stays_online_until_a_newer_read() {
        // Seen on r2: bob moved from r1 to r3, which joined just after r2's last live read.
        // Telling the engine "offline" there would fail a dial to bob (and end his ringing calls).
        let mut v = PresenceView::new("r2");
        let s = v.begin_live_read();
        assert!(v.live_read(s, live(&[("r1", "a"), ("r2", "b")])).is_empty());
        assert_eq!(v.row(bob(), 1, Some(entry("r1", "a"))).len(), 1);
        assert!(!v.take_wants_live());
        // A read begun before r3's row (and finishing after it) does not settle it.
        let stale = v.begin_live_read();
        assert!(v.row(bob(), 2, Some(entry("r3", "c"))).is_empty(), "r3 unknown: no change yet");
        assert!(v.take_wants_live(), "the runtime is asked to read the live set now");
        assert!(!v.take_wants_live());
        assert!(v.live_read(stale, live(&[("r1", "a"), ("r2", "b")])).is_empty());
        // The read asked for finds r3: bob is there.
        let fresh = v.begin_live_read();
        assert_eq!(
            v.live_read(fresh, live(&[("r1", "a"), ("r2", "b"), ("r3", "c")])),
            vec![Change::Online { party: bob(), node: "r3".into(), calls: None }]
        );
        // An older read finishing late changes nothing.
        assert!(v.live_read(stale, live(&[("r2", "b")])).is_empty());
        // A row of a dead incarnation: after a newer read that does not list it, offline.
        assert!(v.row(bob(), 3, Some(entry("r1", "dead"))).is_empty());
        assert!(v.take_wants_live());
        let s = v.begin_live_read();
        assert_eq!(
            v.live_read(s, live(&[("r1", "a"), ("r2", "b"), ("r3", "c")])),
            vec![Change::Offline { party: bob(), node: "r3".into() }]
        );
        // After a fence, reads begun before it are spent.
        let before = v.begin_live_read();
        v.reset();
        assert!(v.live_read(before, live(&[("r2", "b")])).is_empty());
        let s = v.begin_live_read();
        v.live_read(s, live(&[("r2", "b"), ("r3", "c")]));
        assert_eq!(v.row(bob(), 4, Some(entry("r3", "c"))).len(), 1);
    }

    #[test]
    fn an_announced_row_of_a_replica_not_yet_read_live_counts_at_once_and_a_newer_read_decides() {
        let mut v = PresenceView::new("r2");
        let s = v.begin_live_read();
        v.live_read(s, live(&[("r1", "a"), ("r2", "b")]));
        assert_eq!(v.row(bob(), 1, Some(entry("r1", "a"))).len(), 1);
        let stale = v.begin_live_read();
        // r3 announces bob's sign-in there: he is on r3 at once (one Online, a move).
        assert_eq!(
            v.announced(bob(), 2, Some(entry("r3", "c"))),
            vec![Change::Online { party: bob(), node: "r3".into(), calls: None }]
        );
        assert!(v.take_wants_live(), "a read still confirms r3");
        // A read begun before the row does not undo it; one begun after it that lists r3 changes nothing.
        assert!(v.live_read(stale, live(&[("r1", "a"), ("r2", "b")])).is_empty());
        let s = v.begin_live_read();
        assert!(v.live_read(s, live(&[("r1", "a"), ("r2", "b"), ("r3", "c")])).is_empty());
        // An announcement of an incarnation the next read does not list: offline after that read.
        assert_eq!(v.announced(bob(), 3, Some(entry("r4", "d"))).len(), 1);
        assert!(v.take_wants_live());
        let s = v.begin_live_read();
        assert_eq!(
            v.live_read(s, live(&[("r1", "a"), ("r2", "b"), ("r3", "c")])),
            vec![Change::Offline { party: bob(), node: "r4".into() }]
        );
        // Old news changes nothing, announced or not.
        assert!(v.announced(bob(), 2, Some(entry("r5", "e"))).is_empty());
        assert!(!v.take_wants_live());
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

//! An index of the transactions' deadlines, so the core finds the next due timer without
//! looking at every transaction (a registration storm keeps tens of thousands of them alive
//! for 64·T1 each). A min-heap with lazy deletion: an entry is pushed whenever a
//! transaction's earliest deadline changes and is skipped when it no longer matches.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

/// What the index needs of a transaction.
pub(super) trait Timed {
    fn next_timeout(&self) -> Option<Instant>;
    /// Ties at one instant fire in this order (the order the transactions were opened).
    fn order(&self) -> u64;
}

/// A heap entry, ordered by (deadline, order) only.
pub(super) struct Entry<K> {
    pub at: Instant,
    pub order: u64,
    pub key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// A min-heap of (deadline, order, key) with lazy deletion.
pub(super) struct Deadlines<K>(BinaryHeap<Reverse<Entry<K>>>);

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines(BinaryHeap::new())
    }
}

impl<K> Deadlines<K> {
    pub(super) fn push(&mut self, at: Instant, order: u64, key: K) {
        self.0.push(Reverse(Entry { at, order, key }));
    }

    /// The earliest entry (possibly stale: then the caller wakes early and finds nothing due).
    pub(super) fn peek(&self) -> Option<(Instant, u64)> {
        self.0.peek().map(|Reverse(e)| (e.at, e.order))
    }

    /// The earliest entry due at `now` that `current` confirms (the key's deadline and order
    /// now); stale entries on the way are dropped. Not taken out.
    pub(super) fn peek_due(&mut self, now: Instant, current: impl Fn(&K) -> Option<(Instant, u64)>) -> Option<(Instant, u64)> {
        while let Some(Reverse(e)) = self.0.peek() {
            if e.at > now {
                return None;
            }
            if current(&e.key) == Some((e.at, e.order)) {
                return Some((e.at, e.order));
            }
            self.0.pop();
        }
        None
    }

    pub(super) fn pop(&mut self) -> Option<K> {
        self.0.pop().map(|Reverse(e)| e.key)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Drop stale entries when they outnumber the live ones (deadlines that moved far out
    /// leave entries that would otherwise wait for their old time).
    fn compact(&mut self, live: usize, current: impl Fn(&K) -> Option<(Instant, u64)>) {
        if self.0.len() > 64 && self.0.len() > 4 * live {
            let v = std::mem::take(&mut self.0).into_vec();
            self.0 = v.into_iter().filter(|Reverse(e)| current(&e.key) == Some((e.at, e.order))).collect();
        }
    }
}

/// A transaction table whose deadlines are indexed: every mutable access re-indexes the
/// transaction if its earliest deadline changed.
pub(super) struct TxTable<K, V> {
    map: HashMap<K, V>,
    deadlines: Deadlines<K>,
}

impl<K, V> Default for TxTable<K, V> {
    fn default() -> Self {
        TxTable { map: HashMap::new(), deadlines: Deadlines::default() }
    }
}

fn due_of<V: Timed>(v: &V) -> Option<(Instant, u64)> {
    v.next_timeout().map(|at| (at, v.order()))
}

impl<K: Hash + Eq + Clone, V: Timed> TxTable<K, V> {
    pub(super) fn insert(&mut self, k: K, v: V) {
        if let Some((at, order)) = due_of(&v) {
            self.deadlines.push(at, order, k.clone());
        }
        self.map.insert(k, v);
        let map = &self.map;
        self.deadlines.compact(map.len(), |k| map.get(k).and_then(due_of));
    }

    pub(super) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    pub(super) fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(k)
    }

    pub(super) fn get_mut<'a, Q>(&'a mut self, k: &'a Q) -> Option<TxMut<'a, K, V, Q>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        let v = self.map.get_mut(k)?;
        let before = due_of(v);
        Some(TxMut { v, key: k, before, deadlines: &mut self.deadlines })
    }

    pub(super) fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(k)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The earliest deadline (possibly stale: early, never late).
    pub(super) fn next_timeout(&self) -> Option<(Instant, u64)> {
        self.deadlines.peek()
    }

    /// The earliest live deadline due at `now`, if any (stale entries dropped).
    pub(super) fn peek_due(&mut self, now: Instant) -> Option<(Instant, u64)> {
        let map = &self.map;
        self.deadlines.peek_due(now, |k| map.get(k).and_then(due_of))
    }

    /// Take out the entry `peek_due` returned; its key.
    pub(super) fn pop_due(&mut self) -> Option<K> {
        self.deadlines.pop()
    }

    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.deadlines.len()
    }
}

/// A mutable borrow of one transaction; re-indexes it on drop if its deadline changed.
pub(super) struct TxMut<'a, K, V: Timed, Q: ?Sized + ToOwned<Owned = K>> {
    v: &'a mut V,
    key: &'a Q,
    before: Option<(Instant, u64)>,
    deadlines: &'a mut Deadlines<K>,
}

impl<K, V: Timed, Q: ?Sized + ToOwned<Owned = K>> Deref for TxMut<'_, K, V, Q> {
    type Target = V;
    fn deref(&self) -> &V {
        self.v
    }
}

impl<K, V: Timed, Q: ?Sized + ToOwned<Owned = K>> DerefMut for TxMut<'_, K, V, Q> {
    fn deref_mut(&mut self) -> &mut V {
        self.v
    }
}

impl<K, V: Timed, Q: ?Sized + ToOwned<Owned = K>> Drop for TxMut<'_, K, V, Q> {
    fn drop(&mut self) {
        let now = due_of(self.v);
        if now != self.before
            && let Some((at, order)) = now
        {
            self.deadlines.push(at, order, self.key.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct T(Option<Instant>, u64);
    impl Timed for T {
        fn next_timeout(&self) -> Option<Instant> {
            self.0
        }
        fn order(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn the_earliest_live_deadline_comes_first_and_moved_or_removed_ones_are_skipped() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut tbl: TxTable<String, T> = TxTable::default();
        tbl.insert("a".into(), T(Some(s(5)), 1));
        tbl.insert("b".into(), T(Some(s(3)), 2));
        tbl.insert("c".into(), T(Some(s(3)), 3));
        tbl.insert("d".into(), T(None, 4));
        assert_eq!(tbl.next_timeout(), Some((s(3), 2)));
        // b moves later; c is removed; d gets a deadline.
        tbl.get_mut("b").unwrap().0 = Some(s(9));
        tbl.remove("c");
        tbl.get_mut("d").unwrap().0 = Some(s(4));
        assert_eq!(tbl.peek_due(s(2)), None);
        let mut fired = vec![];
        while tbl.peek_due(s(10)).is_some() {
            let k = tbl.pop_due().unwrap();
            tbl.get_mut(k.as_str()).unwrap().0 = None;
            fired.push(k);
        }
        assert_eq!(fired, ["d", "a", "b"]);
        assert_eq!(tbl.indexed(), 0);
    }

    #[test]
    fn ties_fire_in_order_and_an_unchanged_deadline_is_not_indexed_twice() {
        let t0 = Instant::now();
        let mut tbl: TxTable<String, T> = TxTable::default();
        tbl.insert("late".into(), T(Some(t0), 7));
        tbl.insert("early".into(), T(Some(t0), 2));
        for _ in 0..3 {
            let _ = tbl.get_mut("late");
        }
        assert_eq!(tbl.indexed(), 2);
        assert_eq!(tbl.peek_due(t0), Some((t0, 2)));
        assert_eq!(tbl.pop_due().as_deref(), Some("early"));
    }
}

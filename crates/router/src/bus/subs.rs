//! Every subscription the bus holds, in one table: subscription ID → what a message on it
//! is for. This is the whole per-subscription cost of the bus (about 60 B per user or
//! room: a slot here and an entry in the key index), where a client library with a
//! channel and a task per subscription spends kilobytes.
//!
//! A subscription ID is a slot index and a generation (`generation << 32 | index`), the
//! generation counting every subscription ever added, so a slot can be reused at once: a
//! message still in flight for a dropped subscription carries an older generation and is
//! recognised as stale.

use std::collections::HashMap;

use super::interest::Key;

/// What messages on one subscription are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// `<prefix>.all`.
    Broadcast,
    /// A user's or room's subject.
    Interest(Key),
    /// The `n`th fixed-subject handler.
    Handler(u32),
    /// The `n`th subject of node-to-node control ([`super::control`]).
    Control(u32),
    /// Replies to our requests (`<inbox>.*`).
    Inbox,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    target: Option<Target>,
}

/// The subscription table.
#[derive(Debug, Default)]
pub(super) struct Subs {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_key: HashMap<Key, u64>,
    live: usize,
    generation: u32,
}

impl Subs {
    /// Adds a subscription; its ID.
    pub(super) fn add(&mut self, target: Target) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    target: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.generation = self.generation.wrapping_add(1);
        let slot = &mut self.slots[index as usize];
        slot.generation = self.generation;
        let sid = (u64::from(slot.generation) << 32) | u64::from(index);
        if let Target::Interest(key) = &target {
            self.by_key.insert(key.clone(), sid);
        }
        slot.target = Some(target);
        self.live += 1;
        sid
    }

    /// What subscription `sid` is for, if it is still held.
    pub(super) fn get(&self, sid: u64) -> Option<&Target> {
        let slot = self.slots.get((sid & 0xffff_ffff) as usize)?;
        if u64::from(slot.generation) != sid >> 32 {
            return None;
        }
        slot.target.as_ref()
    }

    /// The subscription ID of a user's or room's subject.
    pub(super) fn sid_of(&self, key: &Key) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// Drops a user's or room's subscription; its ID, if it was held.
    pub(super) fn remove_key(&mut self, key: &Key) -> Option<u64> {
        let sid = self.by_key.remove(key)?;
        let index = (sid & 0xffff_ffff) as u32;
        self.slots[index as usize].target = None;
        self.free.push(index);
        self.live -= 1;
        Some(sid)
    }

    /// Users and rooms subscribed.
    pub(super) fn interests(&self) -> usize {
        self.by_key.len()
    }

    /// Every subscription held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Every subscription held, for re-subscribing on a new connection.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Target)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let t = s.target.as_ref()?;
            Some(((u64::from(s.generation) << 32) | i as u64, t))
        })
    }

    /// Gives back memory after many subscriptions went.
    pub(super) fn shrink(&mut self) {
        if self.by_key.capacity() > 4 * self.by_key.len() + 1024 {
            self.by_key.shrink_to_fit();
        }
        // Free slots at the end can go; those in the middle stay for reuse.
        while self.slots.last().is_some_and(|s| s.target.is_none()) {
            self.slots.pop();
        }
        if self.free.iter().any(|&i| i as usize >= self.slots.len()) {
            let n = self.slots.len();
            self.free.retain(|&i| (i as usize) < n);
        }
        if self.slots.capacity() > 4 * self.slots.len() + 1024 {
            self.slots.shrink_to_fit();
            self.free.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::subject::Kind;

    fn key(s: &str) -> Key {
        (Kind::User, Arc::from(s))
    }

    #[test]
    fn reused_slots_do_not_take_stale_messages() {
        let mut t = Subs::default();
        let b = t.add(Target::Broadcast);
        let a = t.add(Target::Interest(key("a")));
        assert_eq!(t.get(a), Some(&Target::Interest(key("a"))));
        assert_eq!(t.sid_of(&key("a")), Some(a));
        assert_eq!(t.remove_key(&key("a")), Some(a));
        assert_eq!(t.remove_key(&key("a")), None);
        let c = t.add(Target::Interest(key("c")));
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff, "the slot is reused");
        assert_eq!(
            t.get(a),
            None,
            "a message for the old subscription is stale"
        );
        assert_eq!(t.get(c), Some(&Target::Interest(key("c"))));
        assert_eq!(t.get(b), Some(&Target::Broadcast));
        assert_eq!(t.get(u64::MAX), None);
        assert_eq!((t.len(), t.interests()), (2, 1));
        let mut all: Vec<u64> = t.iter().map(|(s, _)| s).collect();
        all.sort_unstable();
        let mut want = vec![b, c];
        want.sort_unstable();
        assert_eq!(all, want);
    }

    #[test]
    fn shrinks_after_mass_departure() {
        let mut t = Subs::default();
        t.add(Target::Broadcast);
        let keys: Vec<Key> = (0..10_000).map(|i| key(&format!("u{i}"))).collect();
        for k in &keys {
            t.add(Target::Interest(k.clone()));
        }
        for k in &keys {
            t.remove_key(k);
        }
        t.shrink();
        assert_eq!(t.len(), 1);
        assert!(t.slots.len() == 1 && t.free.is_empty());
        assert!(t.by_key.capacity() < 2048);
        let s = t.add(Target::Interest(key("x")));
        assert_eq!(t.get(s), Some(&Target::Interest(key("x"))));
    }
}

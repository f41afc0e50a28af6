//! The user and room registry.
//!
//! Both maps are split into shards by a hash of the ID, each behind its own `RwLock`:
//! connects and disconnects (a write on one shard) and pushes (reads) from different
//! reactors and the API thread rarely meet. IDs are interned: a user's ID is stored once,
//! as the `Arc<str>` key, and the per-connection bookkeeping holds clones of it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;

use parking_lot::RwLock;
use reactor::ConnRef;
use smallvec::{smallvec, SmallVec};

use crate::bus::Kind;

/// Shards per map: a power of two comfortably above the number of threads.
const SHARDS: usize = 64;

/// Past this many members an ID gets a position index, so that join and leave stay O(1)
/// for rooms of any size; below it a scan of a few cache lines is cheaper than hashing.
const INDEX_FROM: usize = 32;

/// The connections under one ID. Most users have one device: their only connection is
/// stored inline, with no allocation. Rooms may have tens of thousands of members: a
/// leave (or a mass disconnect) must not scan them all under the shard's write lock.
#[derive(Debug)]
struct Members {
    list: SmallVec<[ConnRef; 1]>,
    /// Position of each member in `list`, kept only past [`INDEX_FROM`] members. Boxed so
    /// that the common case, a user with one device, pays one pointer for it, not a map.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ConnRef, u32, RandomState>>>,
}

impl Members {
    fn one(conn: ConnRef) -> Self {
        Members {
            list: smallvec![conn],
            index: None,
        }
    }

    fn position(&self, conn: ConnRef) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&conn).map(|&i| i as usize),
            None => self.list.iter().position(|c| *c == conn),
        }
    }

    /// Adds `conn` unless it is already a member.
    fn add(&mut self, conn: ConnRef) {
        if self.position(conn).is_some() {
            return;
        }
        let i = self.list.len();
        self.list.push(conn);
        match &mut self.index {
            Some(index) => {
                index.insert(conn, i as u32);
            }
            None if self.list.len() > INDEX_FROM => {
                let mut index =
                    HashMap::with_capacity_and_hasher(self.list.len() * 2, RandomState::default());
                index.extend(self.list.iter().enumerate().map(|(i, c)| (*c, i as u32)));
                self.index = Some(Box::new(index));
            }
            None => {}
        }
    }

    /// Removes `conn` if it is a member: the last member takes its place.
    fn remove(&mut self, conn: ConnRef) {
        let Some(i) = self.position(conn) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&conn);
            if let Some(moved) = self.list.get(i) {
                index.insert(*moved, i as u32);
            }
            if self.list.len() <= INDEX_FROM / 2 {
                self.index = None;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// foldhash: several times cheaper than SipHash on short IDs, and seeded per process, so
/// room names chosen by clients cannot be crafted to collide.
#[derive(Debug, Default)]
struct Shard {
    map: RwLock<HashMap<Arc<str>, Members, RandomState>>,
}

/// One sharded ID → connections map.
#[derive(Debug)]
struct ShardedMap {
    shards: Box<[Shard]>,
    /// Picks the shard; seeded apart from the maps' own hashers so that the keys of one
    /// shard still spread over its map.
    pick: RandomState,
}

impl ShardedMap {
    fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            pick: RandomState::default(),
        }
    }

    fn shard(&self, id: &str) -> &Shard {
        &self.shards[self.pick.hash_one(id) as usize & (SHARDS - 1)]
    }

    /// Adds `conn` under `id`; returns the interned ID and whether `conn` is the first.
    fn insert(&self, id: &str, conn: ConnRef) -> (Arc<str>, bool) {
        let mut map = self.shard(id).map.write();
        if let Some(key) = map.get_key_value(id).map(|(k, _)| Arc::clone(k)) {
            if let Some(members) = map.get_mut(id) {
                members.add(conn);
            }
            return (key, false);
        }
        let key: Arc<str> = Arc::from(id);
        map.insert(Arc::clone(&key), Members::one(conn));
        (key, true)
    }

    /// Removes `conn` from `id`, dropping the entry when it empties; true if it did.
    fn remove(&self, id: &str, conn: ConnRef) -> bool {
        let mut map = self.shard(id).map.write();
        let now_empty = match map.get_mut(id) {
            Some(members) => {
                members.remove(conn);
                members.is_empty()
            }
            None => false,
        };
        if now_empty {
            map.remove(id);
        }
        now_empty
    }

    fn contains(&self, id: &str) -> bool {
        self.shard(id).map.read().contains_key(id)
    }

    /// Appends the connections under `id` to `out`; false when there are none.
    fn collect(&self, id: &str, out: &mut Vec<ConnRef>) -> bool {
        match self.shard(id).map.read().get(id) {
            Some(m) => {
                out.extend_from_slice(&m.list);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.read().len()).sum()
    }
}

/// Users and rooms of this node.
#[derive(Debug)]
pub struct Registry {
    users: ShardedMap,
    rooms: ShardedMap,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// Empty.
    pub fn new() -> Self {
        Registry {
            users: ShardedMap::new(),
            rooms: ShardedMap::new(),
        }
    }

    /// A connection of `uid` opened; returns the interned ID and whether it is the
    /// user's first connection here.
    pub fn add_user(&self, uid: &str, conn: ConnRef) -> (Arc<str>, bool) {
        self.users.insert(uid, conn)
    }

    /// A connection of `uid` went away; true if it was the user's last here.
    pub fn remove_user(&self, uid: &str, conn: ConnRef) -> bool {
        self.users.remove(uid, conn)
    }

    /// `conn` joined `room`; returns the interned ID and whether it is the room's first
    /// member here.
    pub fn join(&self, room: &str, conn: ConnRef) -> (Arc<str>, bool) {
        self.rooms.insert(room, conn)
    }

    /// `conn` left `room`; true if it was the room's last member here.
    pub fn leave(&self, room: &str, conn: ConnRef) -> bool {
        self.rooms.remove(room, conn)
    }

    /// Whether the user or room has a connection here.
    pub fn contains(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::User => self.users.contains(id),
            Kind::Room => self.rooms.contains(id),
        }
    }

    /// Appends every connection of `uid`; false if the user is not on this node.
    pub fn user_connections(&self, uid: &str, out: &mut Vec<ConnRef>) -> bool {
        self.users.collect(uid, out)
    }

    /// Appends every member connection of `room`; false if the room is empty here.
    pub fn room_connections(&self, room: &str, out: &mut Vec<ConnRef>) -> bool {
        self.rooms.collect(room, out)
    }

    /// Users with at least one connection here.
    pub fn users_online(&self) -> usize {
        self.users.len()
    }

    /// Rooms with at least one member here.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: u32) -> ConnRef {
        ConnRef {
            reactor: 0,
            index,
            generation: 1,
        }
    }

    #[test]
    fn users_with_many_devices() {
        let r = Registry::new();
        let (a1, first) = r.add_user("alice", c(1));
        assert!(first);
        let (a2, first) = r.add_user("alice", c(2));
        assert!(!first);
        assert!(Arc::ptr_eq(&a1, &a2), "one interned ID per user");
        assert!(r.contains(Kind::User, "alice") && !r.contains(Kind::Room, "alice"));
        r.add_user("bob", c(3));
        let mut out = Vec::new();
        assert!(r.user_connections("alice", &mut out));
        assert_eq!(out, [c(1), c(2)]);
        assert_eq!(r.users_online(), 2);
        assert!(!r.remove_user("alice", c(1)));
        assert!(
            r.remove_user("alice", c(2)),
            "the last connection empties the entry"
        );
        assert!(!r.user_connections("alice", &mut Vec::new()));
        assert_eq!(r.users_online(), 1);
        r.remove_user("nobody", c(9));
    }

    #[test]
    fn rooms_join_and_leave() {
        let r = Registry::new();
        r.join("r1", c(1));
        r.join("r1", c(1));
        r.join("r1", c(2));
        let mut out = Vec::new();
        r.room_connections("r1", &mut out);
        assert_eq!(out, [c(1), c(2)], "joining twice is one membership");
        assert!(!r.leave("r1", c(1)));
        assert!(r.leave("r1", c(2)));
        assert!(!r.leave("r1", c(2)));
        assert_eq!(r.rooms(), 0);
    }

    #[test]
    fn large_rooms_keep_their_index_in_step() {
        let r = Registry::new();
        let n = 5 * INDEX_FROM as u32;
        for i in 0..n {
            r.join("big", c(i));
            r.join("big", c(i));
        }
        let members = |r: &Registry| {
            let mut out = Vec::new();
            r.room_connections("big", &mut out);
            out.sort_by_key(|c| c.index);
            out
        };
        assert_eq!(members(&r), (0..n).map(c).collect::<Vec<_>>());
        // Leave every third member, in an order that moves members around.
        for i in (0..n).rev().step_by(3) {
            assert!(!r.leave("big", c(i)));
            assert!(!r.leave("big", c(i)), "leaving twice is harmless");
        }
        let expected: Vec<ConnRef> = (0..n).filter(|i| (n - 1 - i) % 3 != 0).map(c).collect();
        assert_eq!(members(&r), expected);
        // Down through the size where the index is dropped, and out.
        for (k, conn) in expected.iter().enumerate() {
            assert_eq!(r.leave("big", *conn), k + 1 == expected.len());
        }
        assert_eq!(r.rooms(), 0);
    }

    /// Regression: join and leave scanned the member list under the shard's write lock, so
    /// a room of n members emptying at once (a mass disconnect) cost O(n²): about 5·10⁹
    /// comparisons here, many seconds. With the index it is O(n).
    #[test]
    fn a_mass_disconnect_of_a_huge_room_is_linear() {
        let r = Registry::new();
        let n = 100_000u32;
        let start = std::time::Instant::now();
        for i in 0..n {
            r.join("everyone", c(i));
        }
        for i in 0..n {
            r.leave("everyone", c(i));
        }
        let took = start.elapsed();
        assert_eq!(r.rooms(), 0);
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }
}

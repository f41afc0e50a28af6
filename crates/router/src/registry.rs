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

/// Most users have one device: their only connection is stored inline, with no allocation.
type Members = SmallVec<[ConnRef; 1]>;

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
                if !members.contains(&conn) {
                    members.push(conn);
                }
            }
            return (key, false);
        }
        let key: Arc<str> = Arc::from(id);
        map.insert(Arc::clone(&key), smallvec![conn]);
        (key, true)
    }

    /// Removes `conn` from `id`, dropping the entry when it empties; true if it did.
    fn remove(&self, id: &str, conn: ConnRef) -> bool {
        let mut map = self.shard(id).map.write();
        let now_empty = match map.get_mut(id) {
            Some(members) => {
                members.retain(|c| *c != conn);
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
                out.extend_from_slice(m);
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
}

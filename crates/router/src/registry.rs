//! The user and room registry.
//!
//! Both maps are split into shards by a hash of the ID, each behind its own `RwLock`:
//! connects and disconnects (a write on one shard) and pushes (reads) from different
//! reactors and the API thread rarely meet. IDs are interned: a user's ID is stored once,
//! as the `Arc<str>` key, and the per-connection bookkeeping holds clones of it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;

use parking_lot::RwLock;
use reactor::ConnRef;
use smallvec::{smallvec, SmallVec};

use crate::bus::Kind;
use crate::router::DEFAULT_DEVICE;

/// Shards per map: a power of two comfortably above the number of threads.
const SHARDS: usize = 64;

/// Past this many members an ID gets a position index, so that join and leave stay O(1)
/// for rooms of any size; below it a scan of a few cache lines is cheaper than hashing.
const INDEX_FROM: usize = 32;

/// One connection of a user on this node, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConn {
    /// The connection.
    pub conn: ConnRef,
    /// `?device=` (`None`: the default device).
    pub device: Option<Arc<str>>,
    /// When it opened, in microseconds since the Unix epoch, made unique and increasing
    /// on this node (the smallest is the oldest; 0 for a user's only connection without
    /// a device, whose age nothing needed); comparable across nodes within their clocks'
    /// skew.
    pub opened: u64,
}

impl UserConn {
    /// `?device=`, if the connection named one.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

/// What the registry keeps beside a user's connection, when it keeps anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ConnMeta {
    device: Option<Arc<str>>,
    opened: u64,
}

/// What only some IDs need, boxed so that the others pay one pointer for it.
#[derive(Debug, Default)]
struct Extra {
    /// Position of each member in `list`, kept only past [`INDEX_FROM`] members.
    index: Option<HashMap<ConnRef, u32, RandomState>>,
    /// Device and opening time of each member, parallel to `list`; kept only for a user
    /// with a named device or more than one connection (never for a room).
    meta: Vec<ConnMeta>,
}

/// The connections under one ID. Most users have one connection with no device: it is
/// stored inline, with no allocation, exactly as a room member is. Rooms may have tens
/// of thousands of members: a leave (or a mass disconnect) must not scan them all under
/// the shard's write lock.
#[derive(Debug)]
struct Members {
    list: SmallVec<[ConnRef; 1]>,
    extra: Option<Box<Extra>>,
}

impl Members {
    fn one(conn: ConnRef, meta: Option<ConnMeta>) -> Self {
        let mut m = Members {
            list: smallvec![conn],
            extra: None,
        };
        m.set_meta(0, meta);
        m
    }

    /// Records `meta` for the member at `i` (the last added) if anything needs it: a
    /// named device, or more than one connection (then the age orders them).
    fn set_meta(&mut self, i: usize, meta: Option<ConnMeta>) {
        let Some(meta) = meta else {
            return;
        };
        let kept = self.extra.as_ref().is_some_and(|e| !e.meta.is_empty());
        if meta.device.is_none() && self.list.len() == 1 && !kept {
            return;
        }
        let e = self.extra.get_or_insert_with(Box::default);
        // Members from before (a lone connection without a device) are older than any.
        e.meta.resize(i, ConnMeta::default());
        e.meta.push(meta);
    }

    fn metas(&self) -> &[ConnMeta] {
        self.extra.as_ref().map_or(&[], |e| e.meta.as_slice())
    }

    fn user_conn(&self, i: usize) -> Option<UserConn> {
        let conn = *self.list.get(i)?;
        let meta = self.metas().get(i).cloned().unwrap_or_default();
        Some(UserConn {
            conn,
            device: meta.device,
            opened: meta.opened,
        })
    }

    fn position(&self, conn: ConnRef) -> Option<usize> {
        match self.extra.as_ref().and_then(|e| e.index.as_ref()) {
            Some(index) => index.get(&conn).map(|&i| i as usize),
            None => self.list.iter().position(|c| *c == conn),
        }
    }

    /// Adds `conn` unless it is already a member.
    fn add(&mut self, conn: ConnRef, meta: Option<ConnMeta>) {
        if self.position(conn).is_some() {
            return;
        }
        let i = self.list.len();
        self.list.push(conn);
        self.set_meta(i, meta);
        match self.extra.as_mut().and_then(|e| e.index.as_mut()) {
            Some(index) => {
                index.insert(conn, i as u32);
            }
            None if self.list.len() > INDEX_FROM => {
                let mut index =
                    HashMap::with_capacity_and_hasher(self.list.len() * 2, RandomState::default());
                index.extend(self.list.iter().enumerate().map(|(i, c)| (*c, i as u32)));
                self.extra.get_or_insert_with(Box::default).index = Some(index);
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
        let Some(e) = &mut self.extra else {
            return;
        };
        if i < e.meta.len() {
            e.meta.swap_remove(i);
        }
        if let Some(index) = &mut e.index {
            index.remove(&conn);
            if let Some(moved) = self.list.get(i) {
                index.insert(*moved, i as u32);
            }
            if self.list.len() <= INDEX_FROM / 2 {
                e.index = None;
            }
        }
        // A lone connection without a device needs no record again.
        if self.list.len() <= 1 && e.meta.first().is_none_or(|m| m.device.is_none()) {
            e.meta = Vec::new();
        }
        if e.index.is_none() && e.meta.is_empty() {
            self.extra = None;
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

    /// Adds `conn` (with `meta`, for a user) under `id`; returns the interned ID and
    /// whether it is the first. `evict` runs first, under the same lock, on the members
    /// already there, and names the ones to remove (the per-user cap); they are appended
    /// to `evicted`.
    fn insert(
        &self,
        id: &str,
        conn: ConnRef,
        meta: Option<ConnMeta>,
        evict: impl FnOnce(&Members) -> SmallVec<[ConnRef; 2]>,
        evicted: &mut Vec<UserConn>,
    ) -> (Arc<str>, bool) {
        let mut map = self.shard(id).map.write();
        if let Some(key) = map.get_key_value(id).map(|(k, _)| Arc::clone(k)) {
            if let Some(members) = map.get_mut(id) {
                for victim in evict(members) {
                    if let Some(i) = members.position(victim) {
                        evicted.extend(members.user_conn(i));
                        members.remove(victim);
                    }
                }
                members.add(conn, meta);
            }
            return (key, false);
        }
        let key: Arc<str> = Arc::from(id);
        map.insert(Arc::clone(&key), Members::one(conn, meta));
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

    /// How many connections are under `id`, appending the first `max` of them to `out`.
    fn count_some(&self, id: &str, max: usize, out: &mut Vec<ConnRef>) -> usize {
        match self.shard(id).map.read().get(id) {
            Some(m) => {
                out.extend(m.list.iter().take(max).copied());
                m.list.len()
            }
            None => 0,
        }
    }

    /// Appends the members under `id` that `keep` selects.
    fn members(&self, id: &str, mut keep: impl FnMut(&UserConn) -> bool, out: &mut Vec<UserConn>) {
        if let Some(m) = self.shard(id).map.read().get(id) {
            out.extend(
                (0..m.list.len())
                    .filter_map(|i| m.user_conn(i))
                    .filter(|u| keep(u)),
            );
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
    /// The last [`UserConn::opened`] handed out.
    opened: AtomicU64,
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
            opened: AtomicU64::new(0),
        }
    }

    /// A connection of `uid` opened; returns the interned ID and whether it is the
    /// user's first connection here.
    pub fn add_user(&self, uid: &str, conn: ConnRef) -> (Arc<str>, bool) {
        let (id, first, _) = self.add_user_capped(uid, conn, None, usize::MAX, &mut Vec::new());
        (id, first)
    }

    /// Now in microseconds since the Unix epoch, above every stamp handed out before.
    fn stamp(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut prev = self.opened.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.opened.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// A connection of `uid` on `device` opened, and the user may hold at most `cap`
    /// connections here (at least one): atomically with the insert, the user's
    /// connection on the same named device and then the oldest ones beyond the cap are
    /// taken out of the registry and appended to `evicted`, for the caller to close.
    /// Returns the interned ID, whether it is the user's first connection here, and
    /// its [`UserConn::opened`].
    pub fn add_user_capped(
        &self,
        uid: &str,
        conn: ConnRef,
        device: Option<&str>,
        cap: usize,
        evicted: &mut Vec<UserConn>,
    ) -> (Arc<str>, bool, u64) {
        let opened = self.stamp();
        let meta = ConnMeta {
            device: device.map(Arc::from),
            opened,
        };
        let (id, first) = self.users.insert(
            uid,
            conn,
            Some(meta),
            |have| cap_victims(have, device, cap),
            evicted,
        );
        (id, first, opened)
    }

    /// A connection of `uid` went away; true if it was the user's last here.
    pub fn remove_user(&self, uid: &str, conn: ConnRef) -> bool {
        self.users.remove(uid, conn)
    }

    /// `conn` joined `room`; returns the interned ID and whether it is the room's first
    /// member here.
    pub fn join(&self, room: &str, conn: ConnRef) -> (Arc<str>, bool) {
        self.rooms
            .insert(room, conn, None, |_| SmallVec::new(), &mut Vec::new())
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

    /// Appends the connections of `uid` here, of `device` only if given, opened before
    /// `before` (microseconds since the Unix epoch) only if given.
    pub fn user_conns(
        &self,
        uid: &str,
        device: Option<&str>,
        before: Option<u64>,
        out: &mut Vec<UserConn>,
    ) {
        self.users.members(
            uid,
            |m| {
                device.is_none_or(|d| m.device().unwrap_or(DEFAULT_DEVICE) == d)
                    && before.is_none_or(|b| m.opened < b)
            },
            out,
        );
    }

    /// Appends every member connection of `room`; false if the room is empty here.
    pub fn room_connections(&self, room: &str, out: &mut Vec<ConnRef>) -> bool {
        self.rooms.collect(room, out)
    }

    /// How many connections are in `room`, appending the first `max` of them to `out`.
    pub fn room_members(&self, room: &str, max: usize, out: &mut Vec<ConnRef>) -> usize {
        self.rooms.count_some(room, max, out)
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

/// The members a new connection on `device` displaces under a cap of `cap`: the one on
/// the same named device (a reconnect replaces it), then the oldest while more than
/// `cap - 1` would remain.
fn cap_victims(have: &Members, device: Option<&str>, cap: usize) -> SmallVec<[ConnRef; 2]> {
    let mut out = SmallVec::new();
    let metas = have.metas();
    if let Some(d) = device {
        // A member with a device always has its record.
        out.extend(
            have.list
                .iter()
                .zip(metas)
                .filter(|(_, m)| m.device.as_deref() == Some(d))
                .map(|(c, _)| *c),
        );
    }
    let keep = cap.max(1) - 1;
    if have.list.len() - out.len() > keep {
        let mut rest: SmallVec<[(u64, ConnRef); 16]> = have
            .list
            .iter()
            .enumerate()
            .filter(|(_, c)| !out.contains(*c))
            .map(|(i, c)| (metas.get(i).map_or(0, |m| m.opened), *c))
            .collect();
        rest.sort_unstable_by_key(|(opened, _)| *opened);
        let n = rest.len() - keep;
        out.extend(rest.iter().take(n).map(|(_, c)| *c));
    }
    out
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
    fn the_per_user_cap_closes_the_oldest_and_replaces_a_device() {
        let r = Registry::new();
        let mut evicted = Vec::new();
        let (_, first, _) = r.add_user_capped("u", c(1), Some("phone"), 3, &mut evicted);
        assert!(first);
        r.add_user_capped("u", c(2), None, 3, &mut evicted);
        r.add_user_capped("u", c(3), None, 3, &mut evicted);
        assert!(evicted.is_empty());
        // A fourth: the oldest goes.
        r.add_user_capped("u", c(4), Some("tablet"), 3, &mut evicted);
        assert_eq!(evicted.iter().map(|e| e.conn).collect::<Vec<_>>(), [c(1)]);
        assert_eq!(evicted[0].device(), Some("phone"));
        evicted.clear();
        // The tablet reconnects: it replaces its old connection, nobody else goes.
        r.add_user_capped("u", c(5), Some("tablet"), 3, &mut evicted);
        assert_eq!(evicted.iter().map(|e| e.conn).collect::<Vec<_>>(), [c(4)]);
        evicted.clear();
        // Connections without a device never replace each other.
        let mut all = Vec::new();
        r.user_conns("u", None, None, &mut all);
        all.sort_by_key(|m| m.opened);
        assert_eq!(
            all.iter().map(|m| m.conn).collect::<Vec<_>>(),
            [c(2), c(3), c(5)]
        );
        let mut tablets = Vec::new();
        r.user_conns("u", Some("tablet"), None, &mut tablets);
        assert_eq!(tablets.len(), 1);
        let mut defaults = Vec::new();
        r.user_conns("u", Some(DEFAULT_DEVICE), None, &mut defaults);
        assert_eq!(defaults.len(), 2, "no ?device= is the default device");
        let mut older = Vec::new();
        r.user_conns("u", None, Some(all[1].opened), &mut older);
        assert_eq!(older.iter().map(|m| m.conn).collect::<Vec<_>>(), [c(2)]);
        // A cap of 1: each new connection displaces the last.
        r.add_user_capped("v", c(10), None, 1, &mut evicted);
        r.add_user_capped("v", c(11), None, 1, &mut evicted);
        assert_eq!(evicted.iter().map(|e| e.conn).collect::<Vec<_>>(), [c(10)]);
        // Closing an evicted connection later leaves the user's entry alone.
        assert!(!r.remove_user("v", c(10)));
        assert!(r.contains(Kind::User, "v"));
    }

    /// A user with one connection and no device (most of them) costs what a room member
    /// does: its entry holds the connection inline and one pointer for the rest.
    #[test]
    fn a_lone_connection_costs_no_record() {
        assert_eq!(
            std::mem::size_of::<Members>(),
            std::mem::size_of::<SmallVec<[ConnRef; 1]>>() + std::mem::size_of::<usize>()
        );
        let r = Registry::new();
        r.add_user("u", c(1));
        let extra = |r: &Registry, id: &str| {
            r.users
                .shard(id)
                .map
                .read()
                .get(id)
                .map(|m| m.extra.is_some())
        };
        assert_eq!(extra(&r, "u"), Some(false));
        r.add_user("u", c(2));
        assert_eq!(
            extra(&r, "u"),
            Some(true),
            "two connections are ordered by age"
        );
        r.remove_user("u", c(1));
        assert_eq!(extra(&r, "u"), Some(false), "alone again");
        let mut ev = Vec::new();
        r.add_user_capped("w", c(3), Some("phone"), 16, &mut ev);
        assert_eq!(extra(&r, "w"), Some(true), "a device is kept");
    }

    /// Devices and ages stay with their connections through any order of opens and
    /// closes, across the size where the position index comes and goes.
    #[test]
    fn user_records_follow_their_connections() {
        let r = Registry::new();
        let mut model: Vec<(ConnRef, Option<String>)> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..4000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let add = model.is_empty() || (x % 100) < if step < 2000 { 60 } else { 40 };
            if add && model.len() < 80 {
                let conn = c(step);
                let device = (x % 3 == 0).then(|| format!("d{step}"));
                r.add_user_capped("u", conn, device.as_deref(), usize::MAX, &mut Vec::new());
                model.push((conn, device));
            } else if !model.is_empty() {
                let (conn, _) = model.remove((x as usize / 7) % model.len());
                r.remove_user("u", conn);
            }
            let mut got = Vec::new();
            r.user_conns("u", None, None, &mut got);
            got.sort_by_key(|m| m.opened);
            // Opening order is model order; a lone device-less survivor may read 0.
            let want: Vec<(ConnRef, Option<String>)> = model.clone();
            let have: Vec<(ConnRef, Option<String>)> = got
                .iter()
                .map(|m| (m.conn, m.device().map(str::to_owned)))
                .collect();
            assert_eq!(have, want, "step {step}");
        }
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

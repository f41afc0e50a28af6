//! Who is in a room on this node (`GET /v1/rooms/presence`).
//!
//! The registry keeps a room's members as bare [`reactor::ConnRef`]s: the room map holds
//! no user ID or device, so that a membership costs one reference and an idle connection
//! stays near 1 KiB. Mapping a reference back to its user from the registry would mean
//! scanning every user. The connection's own state on its reactor knows its user and
//! device, so the listing asks the reactors that hold the (at most `limit`) members to be
//! listed, with one [`reactor::Command::Task`] each holding a [`RoomListTask`]; nobody
//! waits for them: the task tells its owner what it found once the last reactor lets go
//! of it (a reactor whose inbox was full never holds it). The count needs no reactor: the
//! registry knows how many connections the room has.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Most members one node lists for one query, whatever the query asks: bounds the work a
/// query from another node can cause.
pub const MAX_LISTED: usize = 10_000;

/// One connection in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMember {
    /// Its user.
    pub uid: String,
    /// `?device=` (`"default"` if it named none).
    pub device: String,
    /// The node it is connected to.
    pub node: String,
    /// `reactor.index.generation` on that node.
    pub conn: String,
}

/// A room on one node (or on several, merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomListing {
    /// Connections in the room.
    pub connections: usize,
    /// Those listed, at most the query's limit.
    pub members: Vec<RoomMember>,
}

/// Told a node's [`RoomListing`] on the thread that finished it last: must not block.
pub type ListingDone = Box<dyn FnOnce(RoomListing) + Send>;

/// The members the reactors found for one listing; tells `done` when dropped.
pub struct RoomListTask {
    node: String,
    listing: Mutex<RoomListing>,
    done: Mutex<Option<ListingDone>>,
}

impl std::fmt::Debug for RoomListTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomListTask")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RoomListTask {
    /// A listing of a room of `connections` connections on `node`, told to `done` once
    /// the last holder lets go.
    pub fn new(node: &str, connections: usize, done: ListingDone) -> Arc<Self> {
        Arc::new(RoomListTask {
            node: node.to_owned(),
            listing: Mutex::new(RoomListing {
                connections,
                members: Vec::new(),
            }),
            done: Mutex::new(Some(done)),
        })
    }

    /// A connection in the room is `uid`'s, on `device`.
    pub fn found(&self, conn: reactor::ConnRef, uid: &str, device: Option<&str>) {
        self.listing.lock().members.push(RoomMember {
            uid: uid.to_owned(),
            device: device.unwrap_or(crate::router::DEFAULT_DEVICE).to_owned(),
            node: self.node.clone(),
            conn: format!("{}.{}.{}", conn.reactor, conn.index, conn.generation),
        });
    }
}

impl Drop for RoomListTask {
    fn drop(&mut self) {
        if let Some(done) = self.done.get_mut().take() {
            let mut listing = std::mem::take(self.listing.get_mut());
            sort_members(&mut listing.members);
            done(listing);
        }
    }
}

/// By user, device, node and connection: answers read the same whichever reactor
/// answered first.
pub fn sort_members(members: &mut [RoomMember]) {
    members.sort_unstable_by(|a, b| {
        (&a.uid, &a.device, &a.node, &a.conn).cmp(&(&b.uid, &b.device, &b.node, &b.conn))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_told_once_every_holder_let_go() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let task = RoomListTask::new("n1", 3, Box::new(move |l| tx.send(l).unwrap()));
        let other = Arc::clone(&task);
        let c = |index| reactor::ConnRef {
            reactor: 1,
            index,
            generation: 2,
        };
        task.found(c(7), "zed", None);
        drop(task);
        assert!(rx.try_recv().is_err(), "a holder is left");
        other.found(c(4), "amy", Some("phone"));
        drop(other);
        let l = rx.try_recv().unwrap();
        assert_eq!(l.connections, 3);
        let who: Vec<_> = l
            .members
            .iter()
            .map(|m| (&*m.uid, &*m.device, &*m.conn))
            .collect();
        assert_eq!(
            who,
            [("amy", "phone", "1.4.2"), ("zed", "default", "1.7.2")]
        );
    }
}

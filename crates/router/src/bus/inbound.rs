//! What the bus hands the node, as a trait the bus calls and the router implements: the
//! bus knows nothing else of the router (no call into it, no type of it), so either can
//! change without the other, and the bus can be driven by a stand-in.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::control::{Disconnect, PresenceEntry};
use super::subject::Kind;

/// The node, as the bus thread sees it. Called on the bus thread: must not block.
pub trait Inbound: Send + Sync {
    /// A message for every connection of the node (`<prefix>.all`).
    fn broadcast_local(&self, frame: Bytes, received: Instant);
    /// A message for this node's connections of `users` and members of `rooms`, each
    /// once, except connections of `except_users` (which get it from their own copy).
    fn deliver_local(
        &self,
        users: &[&str],
        rooms: &[&str],
        except_users: &[&str],
        frame: Bytes,
        received: Instant,
    );
    /// A stored user message, with its seq and the user's seq before it: delivered in
    /// seq order, once. False if the node keeps no clustered history (the bus then
    /// delivers it as a plain message).
    fn deliver_stored(&self, uid: &str, seq: u64, prev: u64, frame: Bytes) -> bool;
    /// [`Inbound::deliver_stored`] for a room's message, with its `Pushgate-Targets`.
    fn deliver_stored_room(
        &self,
        room: &str,
        seq: u64,
        prev: u64,
        frame: Bytes,
        targets: Option<&str>,
    ) -> bool;
    /// The subscription of a user (or room) took effect: what was stored for it before
    /// is looked at.
    fn catch_up(&self, kind: Kind, id: &Arc<str>);
    /// A seq JetStream itself gave this node (a store's acknowledgement): live copies
    /// claiming seqs far past what the stream vouched for are checked with it first.
    fn vouch(&self, seq: u64);
    /// Whether the node holds a connection of the user (or a member of the room).
    fn holds(&self, kind: Kind, id: &str) -> bool;
    /// This node's connections of `uid`, for another node's presence query.
    fn presence_local(&self, uid: &str, node: &str) -> Vec<PresenceEntry>;
    /// Closes this node's connections a disconnect names; how many.
    fn disconnect_local(&self, req: &Disconnect) -> usize;
    /// The connections in `room` here, `limit` of them listed; `done` is told them
    /// later, on whichever thread finishes the listing (never waits).
    fn room_presence_local(
        &self,
        room: &str,
        node: &str,
        limit: usize,
        done: crate::room_presence::ListingDone,
    );
    /// Carries another node's server-side room change to this node's connections.
    fn change_rooms_local(&self, req: &crate::rooms::RoomChange);
    /// A device of `uid` acknowledged up to `seq` on another node (an ack it stored).
    fn acked_elsewhere(&self, uid: &str, seq: u64);
}

/// `payload` as one unmasked text frame, as the node's connections get it.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut f = protocol::frame::FrameBuilder::with_capacity(payload.len());
    f.extend_from_slice(payload);
    f.finish(protocol::OpCode::Text, false)
}

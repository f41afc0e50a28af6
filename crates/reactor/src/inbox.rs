//! Work other threads hand a reactor, and the hooks through which a reactor tells the rest
//! of the gateway about its connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use mio::Waker;
use protocol::CloseCode;

use crate::stats::ReactorStats;

/// Names a connection from outside its reactor. The generation makes a reference to a
/// closed connection whose slot was reused harmless: it matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The owning reactor.
    pub reactor: u16,
    /// Slot in the reactor's slab.
    pub index: u32,
    /// Generation of the connection in that slot.
    pub generation: u32,
}

/// A batch of work for one reactor.
#[derive(Debug)]
pub enum Command {
    /// Queue one shared, already encoded frame on each of these connections.
    Deliver {
        /// The frame (uncompressed; compressed once per reactor for connections that
        /// negotiated permessage-deflate).
        frame: Bytes,
        /// Recipients on this reactor.
        targets: Vec<ConnRef>,
        /// When the push was received, for the push latency histogram.
        received: Option<Instant>,
    },
    /// Queue the frame on every `/ws` connection of the reactor.
    Broadcast {
        /// The frame.
        frame: Bytes,
        /// When the push was received.
        received: Option<Instant>,
    },
    /// Start the close handshake on one connection.
    Close {
        /// The connection.
        target: ConnRef,
        /// Close code to send.
        code: CloseCode,
        /// Close reason to send.
        reason: &'static str,
    },
    /// Stop accepting and close every connection with 1001, spread over `window`.
    Drain {
        /// Time over which the closes are spread.
        window: Duration,
    },
}

/// What a reactor reports about its `/ws` connections. Called on the reactor's thread:
/// implementations must not block.
pub trait Hooks: Send {
    /// A `/ws` connection was upgraded for `uid`.
    fn on_open(&mut self, conn: ConnRef, uid: &str, device: Option<&str>);
    /// A `/ws` client sent a well-formed request (`send`, `join`, `leave`).
    fn on_request(&mut self, conn: ConnRef, request: session::ClientRequest);
    /// A `/ws` connection that was open has gone.
    fn on_close(&mut self, conn: ConnRef);
}

/// The sending side of a reactor's inbox.
#[derive(Debug, Clone)]
pub struct ReactorHandle {
    pub(crate) id: u16,
    pub(crate) tx: Sender<Command>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) stats: Arc<ReactorStats>,
}

impl ReactorHandle {
    /// The reactor's index.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The reactor's counters.
    pub fn stats(&self) -> &Arc<ReactorStats> {
        &self.stats
    }

    /// Sends a command and wakes the reactor. Returns false if the reactor has exited.
    pub fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok() && self.waker.wake().is_ok()
    }
}

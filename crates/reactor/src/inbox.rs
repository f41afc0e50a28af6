//! Work other threads hand a reactor, and the hooks through which a reactor tells the rest
//! of the gateway about its connections.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
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
        /// Close reason to send (at most 123 bytes of UTF-8 go on the wire; a longer one
        /// is cut at a character boundary).
        reason: Cow<'static, str>,
    },
    /// Hand each of these connections to [`Hooks::on_task`] with `task`: work on a
    /// connection's state that lives with the hooks on the reactor's thread (a room
    /// joined or left by the server API). The reactor does not look inside `task`.
    Task {
        /// Connections on this reactor.
        targets: Vec<ConnRef>,
        /// What to do, as the hooks understand it; shared by every target.
        task: Arc<dyn std::any::Any + Send + Sync>,
    },
}

/// What a reactor reports about its `/ws` connections. Called on the reactor's thread:
/// implementations must not block.
pub trait Hooks: Send {
    /// A `/ws` connection was upgraded for `uid`, resuming after `since` (`?since=`), if
    /// given: registers it and says what its `welcome` carries and which retained messages
    /// go right behind it. The driver queues those on the connection before it takes
    /// anything more from its inbox, so a push that found the connection registered
    /// arrives after them.
    ///
    /// `None`: the opening is pending (its replay is read from another node's store);
    /// the welcome comes later through [`ReactorHandle::welcome`], and until then
    /// whatever is delivered to the connection is held, within its outbound limits, and
    /// queued right behind the welcome and its replay.
    fn open(
        &mut self,
        conn: ConnRef,
        uid: &str,
        device: Option<&str>,
        since: Option<u64>,
    ) -> Option<session::Welcome>;
    /// A pending opening's welcome was queued on `conn`; `opened` is what the welcome's
    /// sender handed [`ReactorHandle::welcome`].
    fn welcomed(&mut self, _conn: ConnRef, _opened: u64) {}
    /// A session event the reactor does not act on itself: today a `/ws` client's
    /// well-formed request (`session::Event::Request`), which only the hooks interpret
    /// (and count), so the reactor need not know the client protocol.
    fn on_session_event(&mut self, conn: ConnRef, event: session::Event);
    /// A `/ws` connection that was open has gone.
    fn on_close(&mut self, conn: ConnRef);
    /// A `/ws` connection just opened (right after [`Hooks::open`]) with a token whose
    /// `subs` claim names these rooms: the hooks join it to them.
    fn subscribe(&mut self, _conn: ConnRef, _rooms: &[String]) {}
    /// A [`Command::Task`] for `conn`, which is open on this reactor.
    fn on_task(&mut self, _conn: ConnRef, _task: &(dyn std::any::Any + Send + Sync)) {}
    /// A `POST /send` from `uid` (no connection of the user: the request is the whole
    /// exchange): delivers `data` to `to` as a `/ws` client's `send` would, and says
    /// whether it was taken.
    fn send(
        &mut self,
        uid: &str,
        to: &[String],
        data: &bytes::Bytes,
    ) -> Result<(), session::client_protocol::RequestError>;
}

impl Command {
    /// What the command holds in memory while it waits, for the inbox's byte bound. A
    /// frame shared by several reactors' commands is counted by each: the bound is on
    /// what one reactor has yet to do.
    pub(crate) fn cost(&self) -> usize {
        const OVERHEAD: usize = std::mem::size_of::<Command>();
        match self {
            Command::Deliver { frame, targets, .. } => {
                OVERHEAD + frame.len() + std::mem::size_of_val(targets.as_slice())
            }
            Command::Broadcast { frame, .. } => OVERHEAD + frame.len(),
            Command::Close { reason, .. } => match reason {
                Cow::Borrowed(_) => OVERHEAD,
                Cow::Owned(r) => OVERHEAD + r.len(),
            },
            Command::Task { targets, .. } => OVERHEAD + std::mem::size_of_val(targets.as_slice()),
        }
    }
}

/// A command on its way through an inbox, stamped by its sender for the hand-off stage
/// of `pushgate_push_stage_seconds`.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) cmd: Command,
    /// When it was queued.
    pub(crate) at: Instant,
    /// The reactor whose thread queued it; `None` from any other thread.
    pub(crate) from: Option<u16>,
}

thread_local! {
    /// The reactor this thread runs, if it runs one: tells a hand-off within one reactor
    /// from one across threads.
    static CURRENT_REACTOR: std::cell::Cell<Option<u16>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as reactor `id`'s.
pub(crate) fn set_current_reactor(id: u16) {
    CURRENT_REACTOR.with(|c| c.set(Some(id)));
}

/// The receiving side of a [`ReactorHandle::detached`] handle.
#[derive(Debug)]
pub struct DetachedInbox(crossbeam_channel::Receiver<Queued>);

impl DetachedInbox {
    /// The next command, waiting up to `timeout`.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Command, crossbeam_channel::RecvTimeoutError> {
        self.0.recv_timeout(timeout).map(|q| q.cmd)
    }

    /// The next command, if one waits.
    pub fn try_recv(&self) -> Result<Command, crossbeam_channel::TryRecvError> {
        self.0.try_recv().map(|q| q.cmd)
    }
}

/// Why a command was not taken; each is counted in `pushgate_inbox_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The inbox holds `inbox_depth` commands already.
    #[error("reactor inbox full")]
    Depth,
    /// The inbox holds `inbox_bytes` already.
    #[error("reactor inbox over its byte limit")]
    Bytes,
    /// The reactor has exited.
    #[error("reactor stopped")]
    Gone,
}

/// Reasons in the order of [`InboxShared::dropped`], for `/metrics`.
pub const INBOX_DROP_REASONS: [&str; 3] = ["depth", "bytes", "gone"];

impl InboxError {
    fn index(self) -> usize {
        match self {
            InboxError::Depth => 0,
            InboxError::Bytes => 1,
            InboxError::Gone => 2,
        }
    }
}

/// Shared between a reactor and everyone who sends it work.
#[derive(Debug)]
pub(crate) struct InboxShared {
    /// Bytes held by queued commands.
    pub(crate) bytes: AtomicUsize,
    pub(crate) max_bytes: usize,
    /// Set by a sender that woke the reactor, cleared by the reactor before it drains:
    /// while set, further senders need not wake it again.
    pub(crate) notified: AtomicBool,
    /// Drain window in milliseconds, `u64::MAX` while not draining. Kept out of the
    /// bounded channel so that a full inbox can never hold up a shutdown.
    pub(crate) drain_ms: AtomicU64,
    /// Commands refused, by [`INBOX_DROP_REASONS`]. Written by many threads, rarely.
    pub(crate) dropped: [AtomicU64; 3],
}

impl InboxShared {
    pub(crate) fn new(max_bytes: usize) -> Self {
        InboxShared {
            bytes: AtomicUsize::new(0),
            max_bytes,
            notified: AtomicBool::new(false),
            drain_ms: AtomicU64::new(u64::MAX),
            dropped: Default::default(),
        }
    }

    /// The reactor took a command off the queue.
    pub(crate) fn taken(&self, cmd: &Command) {
        self.bytes.fetch_sub(cmd.cost(), Ordering::Relaxed);
    }

    /// A drain requested and not yet started.
    pub(crate) fn take_drain(&self) -> Option<Duration> {
        match self.drain_ms.swap(u64::MAX, Ordering::AcqRel) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// The sending side of a reactor's inbox: bounded by count and by bytes, and never
/// blocking, so no thread (least of all another reactor) ever waits on a stalled reactor.
#[derive(Debug, Clone)]
pub struct ReactorHandle {
    pub(crate) id: u16,
    pub(crate) tx: Sender<Queued>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) stats: Arc<ReactorStats>,
    pub(crate) inbox: Arc<InboxShared>,
    pub(crate) backend: &'static str,
    /// Answers of parked control requests: unbounded, never refused (see
    /// `crate::parked`).
    pub(crate) answers: Sender<crate::parked::Answered>,
    /// Welcomes of pending openings: unbounded, never refused (bounded by the openings
    /// pending, one per connection).
    pub(crate) welcomes: Sender<Welcomed>,
}

/// A pending opening's welcome on its way to the reactor.
#[derive(Debug)]
pub(crate) struct Welcomed {
    pub(crate) conn: ConnRef,
    pub(crate) welcome: session::Welcome,
    pub(crate) opened: u64,
}

impl ReactorHandle {
    /// A handle whose commands land in the returned receiver rather than in a running
    /// reactor, in the order they were sent: for tests of what is sent to reactors. Keep
    /// the returned `Poll` alive as long as the handle (its waker is registered there).
    pub fn detached(
        id: u16,
        depth: usize,
    ) -> std::io::Result<(ReactorHandle, DetachedInbox, mio::Poll)> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(usize::MAX - 1))?);
        let (tx, rx) = crossbeam_channel::bounded(depth);
        let handle = ReactorHandle {
            id,
            tx,
            waker,
            stats: Arc::default(),
            inbox: Arc::new(InboxShared::new(usize::MAX)),
            backend: "epoll",
            answers: crossbeam_channel::unbounded().0,
            welcomes: crossbeam_channel::unbounded().0,
        };
        Ok((handle, DetachedInbox(rx), poll))
    }

    /// The reactor's index.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The reactor's I/O backend: `epoll` or `io_uring`.
    pub fn io_backend(&self) -> &'static str {
        self.backend
    }

    /// The reactor's counters.
    pub fn stats(&self) -> &Arc<ReactorStats> {
        &self.stats
    }

    /// Queues a command and wakes the reactor unless a wake-up is already pending. Never
    /// blocks: a full inbox refuses the command, and the refusal is counted.
    pub fn send(&self, cmd: Command) -> Result<(), InboxError> {
        let cost = cmd.cost();
        let held = self.inbox.bytes.fetch_add(cost, Ordering::Relaxed);
        // An empty inbox always takes one command, so no single push is undeliverable.
        let result = if held > 0 && held + cost > self.inbox.max_bytes {
            Err(InboxError::Bytes)
        } else {
            let queued = Queued {
                cmd,
                at: Instant::now(),
                from: CURRENT_REACTOR.with(std::cell::Cell::get),
            };
            match self.tx.try_send(queued) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(InboxError::Depth),
                Err(TrySendError::Disconnected(_)) => Err(InboxError::Gone),
            }
        };
        if let Err(e) = result {
            self.inbox.bytes.fetch_sub(cost, Ordering::Relaxed);
            self.inbox.dropped[e.index()].fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.wake();
        Ok(())
    }

    /// The welcome of a connection whose [`Hooks::open`] was pending: queued on it with
    /// its replay, then what was held for it; `opened` goes to [`Hooks::welcomed`].
    /// Never refused, never blocks; a connection gone meanwhile ignores it.
    pub fn welcome(&self, conn: ConnRef, welcome: session::Welcome, opened: u64) {
        let _ = self.welcomes.send(Welcomed {
            conn,
            welcome,
            opened,
        });
        self.wake();
    }

    /// Asks the reactor to stop accepting and close every connection with 1001, spread
    /// over `window`. Never refused.
    pub fn drain(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX - 1);
        self.inbox
            .drain_ms
            .store(ms.min(u64::MAX - 1), Ordering::Release);
        self.inbox.notified.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    pub(crate) fn wake(&self) {
        // SeqCst pairs with the reactor clearing the flag before it drains: either the
        // reactor sees this command, or this sender sees the flag cleared and wakes it.
        if !self.inbox.notified.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Commands refused so far, by reason ([`INBOX_DROP_REASONS`]).
    pub fn dropped(&self) -> [u64; 3] {
        let d = &self.inbox.dropped;
        [0, 1, 2].map(|i| d[i].load(Ordering::Relaxed))
    }

    /// Commands waiting, and the bytes they hold.
    pub fn backlog(&self) -> (usize, usize) {
        (self.tx.len(), self.inbox.bytes.load(Ordering::Relaxed))
    }
}

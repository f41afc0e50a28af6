//! Work from the inbox: pushes and broadcasts queued on connections (compressed once per
//! window size, turned into a Server-Sent Event once for `/sse` connections, answering
//! a parked `/poll`), closes; and the turn's writes, one per connection.

use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::TryRecvError;
use session::conn::{MIN_WINDOW_BITS, WINDOW_SIZES};
use session::Transport;

use super::Reactor;
use crate::driver::Driver;
use crate::inbox::{Command, ConnRef, Queued, Welcomed};
use crate::stats::stage;

/// Inbox commands handled per loop turn.
const COMMANDS_PER_TURN: usize = 1024;
impl<D: Driver> Reactor<D> {
    pub(super) fn drain_inbox(&mut self) {
        if let Some(window) = self.inbox_shared.take_drain() {
            self.start_drain(window, Instant::now());
        }
        for _ in 0..self.welcomes.len() {
            match self.welcomes.try_recv() {
                Ok(w) => self.on_welcomed(w),
                Err(_) => break,
            }
        }
        if let Some(s) = self.services.as_mut() {
            s.drain_answers(
                self.io.registry(),
                &mut self.wheel,
                &self.ticks,
                &self.stats,
            );
        }
        for _ in 0..COMMANDS_PER_TURN {
            match self.inbox.try_recv() {
                Ok(Queued { cmd, at, from }) => {
                    self.inbox_shared.taken(&cmd);
                    let taken = Instant::now();
                    let handoff = if from == Some(self.id) {
                        stage::HANDOFF_LOCAL
                    } else {
                        stage::HANDOFF_CROSS
                    };
                    self.stats
                        .observe_stage(handoff, taken.saturating_duration_since(at));
                    if let Command::Deliver {
                        received: Some(r), ..
                    }
                    | Command::Broadcast {
                        received: Some(r), ..
                    } = &cmd
                    {
                        self.stats
                            .observe_stage(stage::ROUTE, at.saturating_duration_since(*r));
                    }
                    self.on_command(cmd, taken);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Carries out a command taken off the inbox at `taken`.
    pub(super) fn on_command(&mut self, cmd: Command, taken: Instant) {
        match cmd {
            Command::Deliver {
                frame,
                targets,
                received,
            } => {
                let mut compressed = Forms::default();
                for t in targets {
                    match self.resolve(t) {
                        Some(key) => self.deliver(key, &frame, &mut compressed),
                        None => self.stats.count_dropped("gone", 1),
                    }
                }
                self.received.push((received, taken));
            }
            Command::Broadcast { frame, received } => {
                let mut keys = std::mem::take(&mut self.scratch_keys);
                keys.clear();
                keys.extend(
                    self.conns
                        .iter()
                        .filter(|(_, c)| c.push_endpoint && c.session.is_open())
                        .map(|(k, _)| k),
                );
                let mut compressed = Forms::default();
                for &key in &keys {
                    self.deliver(key, &frame, &mut compressed);
                }
                self.scratch_keys = keys;
                self.received.push((received, taken));
            }
            Command::Close {
                target,
                code,
                reason,
            } => {
                if let Some(key) = self.resolve(target) {
                    self.with_session(key, |s, cx, fx| s.close(code, &reason, cx, fx));
                }
            }
            Command::Task { targets, task } => {
                for t in targets {
                    let open = self
                        .resolve(t)
                        .and_then(|key| self.conns.get(key))
                        .is_some_and(|c| c.push_endpoint && c.session.is_open());
                    if open {
                        self.hooks.on_task(t, &*task);
                    }
                }
            }
        }
    }

    /// A pending opening's welcome: queued with its replay, then what was held for the
    /// connection meanwhile, in the order it came.
    fn on_welcomed(&mut self, w: Welcomed) {
        let Some(key) = self.resolve(w.conn) else {
            return;
        };
        let Some(held) = self.opening.remove(&key) else {
            return;
        };
        self.stats.openings_pending.sub(1);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.opening = false;
        let transport = conn.transport;
        self.welcome(key, &held.uid, transport, w.welcome);
        self.hooks.welcomed(w.conn, w.opened);
        let mut forms = Forms::default();
        for frame in held.frames {
            self.deliver(key, &frame, &mut forms);
        }
        self.flush(key);
    }

    pub(super) fn resolve(&self, r: ConnRef) -> Option<usize> {
        let key = r.index as usize;
        match self.conns.get(key) {
            Some(c) if r.reactor == self.id && c.generation == r.generation => Some(key),
            _ => None,
        }
    }

    /// Queues a push frame on one connection: the compressed form when the connection
    /// negotiated permessage-deflate and the payload is worth compressing, compressed at
    /// most once per command and window size, and shared by every such recipient on this
    /// reactor.
    pub(super) fn deliver(&mut self, key: usize, frame: &Bytes, forms: &mut Forms) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !conn.session.is_open() {
            self.stats.count_dropped("gone", 1);
            return;
        }
        if conn.opening {
            return self.hold(key, frame);
        }
        let transport = conn.transport;
        let bytes = match transport {
            Transport::Poll => {
                self.stats.delivered.add(1);
                self.stats.transport_delivered[transport.index()].add(1);
                self.with_session(key, |s, _, fx| s.poll_deliver(frame, fx));
                return;
            }
            Transport::Sse => match &forms.sse {
                Some(e) => e.clone(),
                None => {
                    let Some(e) = session::fallback::sse_from_frame(frame) else {
                        return;
                    };
                    forms.sse.insert(e).clone()
                }
            },
            Transport::Ws => match conn.session.compress_window() {
                Some(bits) if frame.len() >= self.config.compress_min_bytes => {
                    let slot = usize::from(bits.clamp(MIN_WINDOW_BITS, 15) - MIN_WINDOW_BITS);
                    forms.compressed[slot]
                        .get_or_insert_with(|| compress_frame(frame, self.codecs.deflater(bits)))
                        .clone()
                }
                _ => frame.clone(),
            },
        };
        // Writes are batched to the end of the turn; a queue filled by this turn's pushes
        // is written now rather than counted against the consumer.
        if self
            .conns
            .get(key)
            .is_some_and(|c| !c.out.has_room(bytes.len(), &self.config.outbound))
        {
            self.write(key, true);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.push_data(bytes, &self.config.outbound).is_err() {
            self.stats.count_dropped("slow_consumer", 1);
            self.slow_consumer(key);
            return;
        }
        self.stats.frames_out.add(1);
        self.stats.delivered.add(1);
        self.stats.transport_delivered[transport.index()].add(1);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes every connection that was given frames this turn: one vectored write per
    /// connection however many pushes reached it, instead of one per push.
    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
                self.flush(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        if !self.received.is_empty() {
            let now = Instant::now();
            for (received, taken) in self.received.drain(..) {
                self.stats
                    .observe_stage(stage::WRITE, now.saturating_duration_since(taken));
                if let Some(r) = received {
                    self.stats
                        .push_latency
                        .observe(now.saturating_duration_since(r));
                }
            }
        }
    }
}

/// What a connection whose opening is pending was given meanwhile.
#[derive(Debug)]
pub(crate) struct Held {
    uid: String,
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(uid: String) -> Self {
        Held {
            uid,
            frames: Vec::new(),
            bytes: 0,
        }
    }
}

impl<D: Driver> Reactor<D> {
    /// Keeps a frame for a connection whose welcome has not come, within the outbound
    /// limits (what it would have been allowed to queue): past them it is a slow
    /// consumer, as it would have been had the frames been queued.
    fn hold(&mut self, key: usize, frame: &Bytes) {
        let limits = &self.config.outbound;
        let Some(held) = self.opening.get_mut(&key) else {
            return;
        };
        if held.frames.len() + 1 > limits.max_messages
            || held.bytes + frame.len() > limits.max_bytes
        {
            self.opening.remove(&key);
            self.stats.openings_pending.sub(1);
            if let Some(c) = self.conns.get_mut(key) {
                c.opening = false;
            }
            self.stats.count_dropped("slow_consumer", 1);
            self.stats.slow_consumer_closes.add(1);
            self.with_session(key, |s, cx, fx| {
                s.close(
                    protocol::CloseCode::TRY_AGAIN_LATER,
                    "slow consumer",
                    cx,
                    fx,
                )
            });
            return;
        }
        held.bytes += frame.len();
        held.frames.push(frame.clone());
    }
}

/// The forms of one push other than its frame, each made on first need and shared by the
/// reactor's recipients: compressed for each server window size in use, and as an event.
#[derive(Default)]
pub(super) struct Forms {
    compressed: [Option<Bytes>; WINDOW_SIZES],
    sse: Option<Bytes>,
}

/// The same message as `frame` (a final, unmasked server frame), compressed.
fn compress_frame(frame: &Bytes, deflater: &mut protocol::deflate::Deflater) -> Bytes {
    let Ok(Some((header, n))) = protocol::FrameHeader::parse(frame) else {
        return frame.clone();
    };
    let payload = &frame[n..];
    let mut f = protocol::FrameBuilder::with_capacity(payload.len() / 2 + 16);
    f.extend_compressed(deflater, payload);
    f.finish(header.opcode, true)
}

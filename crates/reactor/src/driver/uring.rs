//! The io_uring driver: one ring per reactor, no async runtime.
//!
//! - Accepting: one multishot accept on the reactor's `SO_REUSEPORT` listener. Accepted
//!   sockets wait in a short queue for the reactor's admission checks (the accept rate,
//!   the pending-handshake bound); when those make it stop, the accept is cancelled so
//!   the rest wait in the kernel's backlog, and it is re-armed once the queue is drained.
//! - Reading: one multishot receive per connection into the reactor's provided buffer
//!   ring ([`buf_ring`]): an idle connection owns no read buffer. A buffer goes back to
//!   the ring as soon as the session has its bytes. Out of buffers (`ENOBUFS`), or any
//!   other end of the multishot, re-arms it after the batch of completions that freed
//!   them.
//! - Writing: a connection's queue is taken by one send (a single frame) or `sendmsg`
//!   (several), prepared for every connection written to and submitted together: one
//!   `io_uring_enter` for all of them every 16 completions or 100 µs of a turn
//!   (`crate::connections::flush_budget`), the rest with the turn's wait. The frames stay
//!   alive in the connection's send slot until the completion, which puts a short send's
//!   rest back at the front of the queue.
//! - Waiting: the timer wheel's next deadline is the wait's timeout (`EXT_ARG`).
//! - The inbox's waker, the control listener and its connections stay on a `mio::Poll`
//!   (their code is shared with the epoll backend); the ring watches that epoll set with
//!   one multishot poll, so the reactor still waits in one place. Its completions are
//!   served once per pass over the completion queue (see `reap`).
//! - Closing: a connection removed while the kernel holds requests on its socket has its
//!   requests cancelled, and the socket is closed once the last completion arrived.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Poll};
use socket2::SockRef;

use super::Driver;
use crate::connections::flush_budget::FlushBudget;
use crate::connections::{Conn, Reactor};
use crate::outbound::InFlight;

mod buf_ring;

use buf_ring::BufRing;

/// Submission queue entries (the completion queue is twice that; the kernel keeps
/// overflowing completions rather than dropping them).
const RING_ENTRIES: u32 = 4096;
/// Frames taken by one send.
const MAX_FRAMES_PER_SEND: usize = 64;
/// Accepted sockets held for the admission checks before the accept is cancelled.
const ACCEPT_QUEUE: usize = 64;
/// Batches of completions reaped per turn before timers and the inbox get their turn.
const BATCHES_PER_TURN: usize = 4;
/// Send slots kept for reuse.
const SPARE_SLOTS: usize = 256;
/// How long the reactor waits at exit for the kernel to finish with its sockets.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// What a completion is for: the top byte of its user data.
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_POLL: u64 = 4;
const OP_CANCEL: u64 = 5;
/// Slab keys must fit the 24 bits the user data keeps for them.
const MAX_KEY: usize = (1 << 24) - 1;

fn user_data(op: u64, key: usize, generation: u32) -> u64 {
    (op << 56) | (((key & MAX_KEY) as u64) << 32) | u64::from(generation)
}

fn split_user_data(ud: u64) -> (u64, usize, u32) {
    (ud >> 56, ((ud >> 32) as usize) & MAX_KEY, ud as u32)
}

/// The `iovec`s and message header of one send. Boxed, so the addresses handed to the
/// kernel stay put while the slot moves between the connection and the pool.
#[derive(Default)]
pub(crate) struct SendSlot {
    frames: Vec<InFlight>,
    iov: Vec<libc::iovec>,
    msg: Option<libc::msghdr>,
}

// SAFETY: the raw pointers in `iov` and `msg` point into `frames` (reference-counted
// `Bytes` owned by this slot) and into `iov` itself; they move with the slot, which only
// the owning reactor thread touches.
unsafe impl Send for SendSlot {}

impl std::fmt::Debug for SendSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendSlot")
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

/// What the driver keeps per connection: whether its multishot receive is armed, the
/// send in flight, whether it waits for the end of the turn's sends.
#[derive(Debug, Default)]
pub(crate) struct UringConn {
    recv_armed: bool,
    send: Option<Box<SendSlot>>,
    send_queued: bool,
}

/// A removed connection whose socket the kernel may still be using.
#[derive(Debug)]
struct Closing {
    /// Held, not used: dropping it closes the socket.
    _stream: TcpStream,
    /// Requests whose last completion has yet to arrive.
    ops: u8,
    send: Option<Box<SendSlot>>,
}

/// One reactor's ring and what rides on it.
pub(crate) struct Uring {
    ring: IoUring,
    /// Declared after `ring`: dropped after it.
    bufs: BufRing,
    /// The inbox's waker, the control listener and its connections.
    poll: Poll,
    events: Events,
    poll_armed: bool,
    listener: TcpListener,
    accepting: bool,
    accept_armed: bool,
    /// A cancellation of the multishot accept is on its way.
    accept_cancelling: bool,
    accepted: VecDeque<io::Result<TcpStream>>,
    /// Connections to send for at the end of the turn.
    to_send: Vec<(usize, u32)>,
    /// Connections whose multishot receive ended and is to be re-armed.
    to_recv: Vec<(usize, u32)>,
    /// Spare send slots, kept boxed: a slot's address is what the kernel holds while it
    /// sends, and reusing the box saves an allocation per send.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot>>,
    closing: HashMap<u32, Closing>,
    cqes: Vec<(u64, i32, u32)>,
    /// Completions taken from the ring ahead of the turn's reap (while looking for one
    /// send's, see [`Uring::take_send_completion`]), handled first by the next reap.
    early: Vec<(u64, i32, u32)>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("bufs", &self.bufs)
            .field("closing", &self.closing.len())
            .finish_non_exhaustive()
    }
}

/// Whether this kernel runs the driver: ring setup with the features and opcodes it uses.
pub(crate) fn probe() -> io::Result<()> {
    let ring = IoUring::new(8)?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(io::Error::other("io_uring lacks EXT_ARG or NODROP"));
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [
        ("accept", opcode::AcceptMulti::CODE),
        ("recv", opcode::RecvMulti::CODE),
        ("send", opcode::Send::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("async_cancel", opcode::AsyncCancel2::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::other(format!("io_uring lacks {name}")));
        }
    }
    // Provided buffer rings (5.19) and multishot receive (6.0): a buffer ring that
    // registers says the former; the kernel release the latter.
    let bufs = BufRing::new(&ring.submitter(), 8, 64, 0)?;
    // The ring goes first: the kernel holds the buffer ring until then.
    drop(ring);
    drop(bufs);
    if kernel_release() < (6, 0) {
        return Err(io::Error::other(
            "io_uring multishot receive needs Linux 6.0",
        ));
    }
    Ok(())
}

/// The running kernel's major and minor version.
fn kernel_release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl Uring {
    /// A ring for one reactor over `listener`, with `buffers` receive buffers of
    /// `buffer_size` bytes; `poll` carries the waker, control listener and connections.
    pub(crate) fn new(
        poll: Poll,
        listener: TcpListener,
        buffers: u16,
        buffer_size: usize,
    ) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 2)
            .setup_coop_taskrun()
            .build(RING_ENTRIES)?;
        let bufs = BufRing::new(&ring.submitter(), buffers, buffer_size, 0)?;
        Ok(Uring {
            ring,
            bufs,
            poll,
            events: Events::with_capacity(1024),
            poll_armed: false,
            listener,
            accepting: true,
            accept_armed: false,
            accept_cancelling: false,
            accepted: VecDeque::new(),
            to_send: Vec::new(),
            to_recv: Vec::new(),
            slots: Vec::new(),
            closing: HashMap::new(),
            cqes: Vec::new(),
            early: Vec::new(),
        })
    }

    /// Queues a request, submitting what is queued first if the queue is full.
    ///
    /// # Safety
    /// Whatever the entry points to must stay valid until its last completion.
    unsafe fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: the caller keeps the entry's memory valid.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::warn!(error = %e, "io_uring submit failed");
                }
            }
        }
    }

    fn arm_accept(&mut self) {
        let sqe = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT, 0, 0));
        // SAFETY: a multishot accept refers to no memory of ours.
        unsafe { self.push(&sqe) };
        self.accept_armed = true;
    }

    fn cancel_accept(&mut self) {
        if self.accept_armed && !self.accept_cancelling {
            self.accept_cancelling = true;
            let sqe =
                opcode::AsyncCancel2::new(CancelBuilder::user_data(user_data(OP_ACCEPT, 0, 0)))
                    .build()
                    .user_data(user_data(OP_CANCEL, 0, 0));
            // SAFETY: a cancellation refers to no memory of ours.
            unsafe { self.push(&sqe) };
            // Its completion (or the accept's last one) clears `accept_armed`.
        }
    }

    fn arm_poll(&mut self) {
        let sqe = opcode::PollAdd::new(Fd(self.poll.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(OP_POLL, 0, 0));
        // SAFETY: a poll refers to no memory of ours.
        unsafe { self.push(&sqe) };
        self.poll_armed = true;
    }

    fn arm_recv(&mut self, key: usize, generation: u32, fd: i32) {
        let sqe = opcode::RecvMulti::new(Fd(fd), self.bufs.group())
            .build()
            .user_data(user_data(OP_RECV, key, generation));
        // SAFETY: the receive writes only into the provided buffer ring, which outlives
        // the ring.
        unsafe { self.push(&sqe) };
    }

    /// Submits what is queued and waits for a completion, at most `timeout`.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// One of a removed connection's requests is done; its socket closes after the last.
    fn closing_done(&mut self, generation: u32) {
        if let Some(c) = self.closing.get_mut(&generation) {
            c.ops = c.ops.saturating_sub(1);
            if c.ops == 0 {
                self.closing.remove(&generation);
            }
        }
    }

    /// Looks in the completion queue for the in-flight send of `conn` (at `key`): if it is
    /// there, applies it as `Reactor::on_send` would and returns the bytes it wrote;
    /// every other completion seen is kept, in order, for the next reap. An error the send
    /// reports is returned (the connection is then removed).
    fn take_send_completion(
        &mut self,
        key: usize,
        conn: &mut Conn<UringConn>,
    ) -> io::Result<Option<usize>> {
        let want = user_data(OP_SEND, key, conn.generation);
        let mut found = None;
        for attempt in 0..2 {
            if attempt == 1 {
                if found.is_some() {
                    break;
                }
                // A send that completed in the kernel's task work is posted only once this
                // thread enters the kernel (the ring runs with COOP_TASKRUN): one
                // `io_uring_enter`, which submits nothing new that was not due anyway.
                let _ = self.ring.submit();
            }
            for c in self.ring.completion() {
                let cqe = (c.user_data(), c.result(), c.flags());
                if found.is_none() && cqe.0 == want {
                    found = Some(cqe.1);
                } else {
                    self.early.push(cqe);
                }
            }
        }
        let Some(res) = found else {
            return Ok(None);
        };
        let Some(mut slot) = conn.io.send.take() else {
            return Ok(None);
        };
        let result = match res {
            n if n > 0 => {
                conn.out.finish_send(&mut slot.frames, n as usize);
                Ok(Some(n as usize))
            }
            n if n == -libc::EAGAIN || n == -libc::EINTR => {
                conn.out.finish_send(&mut slot.frames, 0);
                Ok(Some(0))
            }
            n => {
                conn.out.finish_send(&mut slot.frames, 0);
                Err(io::Error::from_raw_os_error(-n))
            }
        };
        self.recycle_slot(slot);
        result
    }

    fn recycle_slot(&mut self, mut slot: Box<SendSlot>) {
        slot.frames.clear();
        slot.iov.clear();
        slot.msg = None;
        if self.slots.len() < SPARE_SLOTS {
            self.slots.push(slot);
        }
    }
}

impl Driver for Uring {
    const NAME: &'static str = "io_uring";
    type ConnIo = UringConn;

    fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            match self.accepted.pop_front() {
                Some(Ok(stream)) => match stream.peer_addr() {
                    Ok(peer) => return Ok((stream, peer)),
                    // Gone before we looked: nothing to serve.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Err(e),
                None => {
                    if self.accepting && !self.accept_armed {
                        self.arm_accept();
                    }
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        self.cancel_accept();
        self.accepted.clear();
    }

    fn add(&mut self, key: usize, conn: &mut Conn<UringConn>) -> io::Result<()> {
        if key > MAX_KEY {
            return Err(io::Error::other(
                "too many connections for one io_uring reactor",
            ));
        }
        self.arm_recv(key, conn.generation, conn.stream.as_raw_fd());
        conn.io.recv_armed = true;
        Ok(())
    }

    fn write(&mut self, key: usize, conn: &mut Conn<UringConn>, now: bool) -> io::Result<usize> {
        let mut written = 0;
        if conn.io.send.is_some() {
            if !now {
                // Its completion sends the rest.
                return Ok(0);
            }
            // The queue is full mid-turn (a burst of pushes to one connection) while a send
            // is in flight: that send has often completed already (a send the socket has
            // room for completes as it is submitted), its completion waiting in the ring
            // for the next reap. Taken now, it makes room instead of the burst being
            // refused as a slow consumer.
            match self.take_send_completion(key, conn)? {
                Some(n) => written = n,
                None => return Ok(0),
            }
        }
        if now {
            // The queue is full mid-turn: what the socket takes now makes room.
            written += conn
                .out
                .flush(conn.tls.as_deref_mut(), &mut DontWait(&conn.stream))?;
        }
        if conn.out.has_unsent() && !conn.io.send_queued {
            conn.io.send_queued = true;
            self.to_send.push((key, conn.generation));
        }
        Ok(written)
    }

    fn release(&mut self, _key: usize, generation: u32, stream: TcpStream, io: UringConn) {
        let ops = u8::from(io.recv_armed) + u8::from(io.send.is_some());
        if ops == 0 {
            drop(stream);
            return;
        }
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(stream.as_raw_fd())).all())
            .build()
            .user_data(user_data(OP_CANCEL, 0, 0));
        // SAFETY: a cancellation refers to no memory of ours.
        unsafe { self.push(&sqe) };
        self.closing.insert(
            generation,
            Closing {
                _stream: stream,
                ops,
                send: io.send,
            },
        );
    }
}

/// Writes with `MSG_DONTWAIT`: the driver's sockets are blocking (the kernel, not the
/// socket, makes the ring's sends asynchronous), but a write outside the ring must not
/// block the reactor.
struct DontWait<'a>(&'a TcpStream);

impl Write for DontWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SockRef::from(self.0).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        SockRef::from(self.0)
            .send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Reactor<Uring> {
    /// Runs until a drain completes.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.io.arm_poll();
        self.accept_loop();
        let mut expired = Vec::new();
        loop {
            // As in the epoll loop: asleep from here, so senders must wake us.
            self.inbox_shared().notified.store(false, Ordering::SeqCst);
            // Completions taken early are waiting already: no sleep before they are handled.
            let timeout = self.poll_timeout(!self.io.early.is_empty());
            self.start_sends();
            self.io.wait(timeout)?;
            self.inbox_shared().notified.store(true, Ordering::SeqCst);
            let now = Instant::now();
            self.begin_turn(now, &mut expired);
            self.reap(now);
            if self.end_turn(now) {
                self.start_sends();
                self.finish();
                return Ok(());
            }
        }
    }

    /// Handles the completions waiting, in batches.
    fn reap(&mut self, now: Instant) {
        let mut budget = FlushBudget::new(now);
        let mut poll_ready = false;
        let mut cqes = std::mem::take(&mut self.io.cqes);
        for _ in 0..BATCHES_PER_TURN {
            cqes.clear();
            cqes.append(&mut self.io.early);
            cqes.extend(
                self.io
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            for &(ud, res, flags) in &cqes {
                if split_user_data(ud).0 == OP_POLL {
                    // The control listener's sockets are ready. The multishot poll posts a
                    // completion for every new readiness, so under load the queue holds
                    // many: they are served once per pass over the queue, after the
                    // batch. Served at each of them (one `epoll_wait` and new sends each),
                    // the publishers kept the queue full: a pass took hundreds of
                    // milliseconds, and a connection's next frame waited that long for its
                    // previous send's completion to be reaped. Served once per pass, a
                    // long queue slows the publishers until it is short again.
                    if !cqueue::more(flags) {
                        self.io.poll_armed = false;
                    }
                    poll_ready = true;
                } else {
                    self.on_completion(ud, res, flags);
                }
                // Every bounded amount of work (completions or time), what was routed
                // so far is sent: submitted, not only queued for the wait's submission.
                if budget.spent() {
                    self.send_now();
                }
            }
            self.serve_and_send(&mut poll_ready);
            budget.restart(Instant::now());
            if !self.io.accepted.is_empty() {
                self.accept_loop();
            }
            self.rearm_ended();
        }
        self.io.cqes = cqes;
        if self.io.accepted.len() >= ACCEPT_QUEUE {
            // Admission stopped accepting: the rest wait in the kernel's backlog.
            self.io.cancel_accept();
        } else if self.io.accepting
            && !self.io.accept_armed
            && self.io.accepted.is_empty()
            && !self.accept_paused()
        {
            // The multishot accept ended (cancelled while the queue was full, or by the
            // kernel) and nothing holds accepting back: start it again.
            self.io.arm_accept();
        }
    }

    fn on_completion(&mut self, ud: u64, res: i32, flags: u32) {
        let (op, key, generation) = split_user_data(ud);
        match op {
            OP_ACCEPT => {
                if !cqueue::more(flags) {
                    self.io.accept_armed = false;
                    self.io.accept_cancelling = false;
                }
                if res >= 0 {
                    // SAFETY: a successful accept completion carries a new descriptor
                    // that nothing else owns.
                    let std = unsafe { std::net::TcpStream::from_raw_fd(res) };
                    self.io.accepted.push_back(Ok(TcpStream::from_std(std)));
                } else if res != -libc::ECANCELED {
                    self.io
                        .accepted
                        .push_back(Err(io::Error::from_raw_os_error(-res)));
                    // An error (out of descriptors, say) is retried after the reactor's
                    // back-off, not by a multishot accept failing in a loop.
                    if self.io.accept_armed {
                        self.io.cancel_accept();
                    }
                }
            }
            OP_POLL => {
                if !cqueue::more(flags) {
                    self.io.poll_armed = false;
                }
                self.poll_events();
            }
            OP_RECV => self.on_recv(key, generation, res, flags),
            OP_SEND => self.on_send(key, generation, res),
            _ => {}
        }
    }

    /// The `mio::Poll` has events: the inbox's waker, the control listener's sockets.
    fn poll_events(&mut self) {
        let mut events = std::mem::replace(&mut self.io.events, Events::with_capacity(0));
        loop {
            if let Err(e) = self.io.poll.poll(&mut events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "control poll failed");
                }
                break;
            }
            for event in events.iter() {
                let closed = event.is_read_closed() || event.is_error();
                self.on_poll_event(event.token(), closed);
            }
            // A full batch may have left events behind, which raise no new wake-up.
            if events.iter().count() < events.capacity() {
                break;
            }
        }
        self.io.events = events;
    }

    fn is_live(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    fn on_recv(&mut self, key: usize, generation: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        if !self.is_live(key, generation) {
            if let Some(bid) = bid {
                self.io.bufs.recycle(bid);
            }
            if !more {
                self.io.closing_done(generation);
            }
            return;
        }
        if !more {
            if let Some(c) = self.conns.get_mut(key) {
                c.io.recv_armed = false;
            }
        }
        if res > 0 {
            let n = res as usize;
            if let Some(bid) = bid {
                if self.wants_input(key) {
                    self.read_buf.clear();
                    self.read_buf.extend_from_slice(self.io.bufs.data(bid, n));
                    self.io.bufs.recycle(bid);
                    self.on_received(key);
                } else {
                    self.io.bufs.recycle(bid);
                }
            }
            if !more {
                self.io.to_recv.push((key, generation));
            }
            return;
        }
        if let Some(bid) = bid {
            self.io.bufs.recycle(bid);
        }
        match -res {
            0 => self.on_eof(key),
            libc::ENOBUFS => {
                // Every buffer was taken: this batch gave them back, so receive again.
                self.stats().recv_buffers_exhausted.add(1);
                self.io.to_recv.push((key, generation));
            }
            libc::EINTR | libc::EAGAIN => self.io.to_recv.push((key, generation)),
            libc::ECANCELED => {}
            _ => self.remove(key, false),
        }
    }

    fn on_send(&mut self, key: usize, generation: u32, res: i32) {
        if !self.is_live(key, generation) {
            if let Some(c) = self.io.closing.get_mut(&generation) {
                c.send = None;
            }
            self.io.closing_done(generation);
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(mut slot) = conn.io.send.take() else {
            return;
        };
        let broken = match res {
            n if n > 0 => {
                conn.out.finish_send(&mut slot.frames, n as usize);
                self.stats().bytes_out.add(n as u64);
                false
            }
            n if n == -libc::EAGAIN || n == -libc::EINTR => {
                conn.out.finish_send(&mut slot.frames, 0);
                false
            }
            _ => {
                conn.out.finish_send(&mut slot.frames, 0);
                true
            }
        };
        self.io.recycle_slot(slot);
        if broken {
            self.remove(key, false);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.out.has_unsent() && !conn.io.send_queued {
                conn.io.send_queued = true;
                self.io.to_send.push((key, generation));
            }
        }
        self.after_write(key);
    }

    /// Mid-turn: serves the control listener's ready sockets if `poll_ready` (and clears
    /// it), then delivers and sends what is routed.
    fn serve_and_send(&mut self, poll_ready: &mut bool) {
        if std::mem::take(poll_ready) {
            self.poll_events();
        }
        self.send_now();
    }

    /// Mid-turn: delivers what the inbox holds and submits the sends, so they start now
    /// rather than at the turn's end.
    fn send_now(&mut self) {
        self.deliver_now();
        if self.io.to_send.is_empty() {
            return;
        }
        self.start_sends();
        if let Err(e) = self.io.ring.submit() {
            if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Re-arms what ended: receives, the control poll.
    fn rearm_ended(&mut self) {
        let to_recv = std::mem::take(&mut self.io.to_recv);
        for &(key, generation) in &to_recv {
            let wants = self.wants_input(key);
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation || conn.io.recv_armed || !wants {
                continue;
            }
            conn.io.recv_armed = true;
            let fd = conn.stream.as_raw_fd();
            self.io.arm_recv(key, generation, fd);
        }
        self.io.to_recv = to_recv;
        self.io.to_recv.clear();
        if !self.io.poll_armed {
            self.io.arm_poll();
        }
    }

    /// Prepares one send for every connection written to this turn; the wait submits them
    /// all at once.
    fn start_sends(&mut self) {
        let to_send = std::mem::take(&mut self.io.to_send);
        let mut failed = Vec::new();
        for &(key, generation) in &to_send {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.io.send_queued = false;
            if conn.io.send.is_some() || !conn.out.has_unsent() {
                continue;
            }
            if let Some(tls) = conn.tls.as_deref_mut() {
                if let Err(e) = conn.out.seal(tls) {
                    failed.push((key, e));
                    continue;
                }
            }
            let mut slot = self.io.slots.pop().unwrap_or_default();
            conn.out
                .take_for_send(&mut slot.frames, MAX_FRAMES_PER_SEND);
            if slot.frames.is_empty() {
                self.io.recycle_slot(slot);
                continue;
            }
            let fd = Fd(conn.stream.as_raw_fd());
            let ud = user_data(OP_SEND, key, generation);
            let sqe = if let [one] = slot.frames.as_slice() {
                opcode::Send::new(fd, one.bytes.as_ptr(), one.bytes.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            } else {
                slot.iov.extend(slot.frames.iter().map(|f| libc::iovec {
                    iov_base: f.bytes.as_ptr() as *mut libc::c_void,
                    iov_len: f.bytes.len(),
                }));
                // SAFETY: an all-zero `msghdr` is a valid empty header.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = slot.iov.as_mut_ptr();
                msg.msg_iovlen = slot.iov.len() as _;
                let msg = slot.msg.insert(msg);
                opcode::SendMsg::new(fd, msg as *const libc::msghdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            };
            conn.io.send = Some(slot);
            // SAFETY: the frames, iovecs and header live in the boxed slot, held by the
            // connection (or, once it is removed, by its `Closing` record) until the
            // send's completion.
            unsafe { self.io.push(&sqe.user_data(ud)) };
        }
        self.io.to_send = to_send;
        self.io.to_send.clear();
        for (key, e) in failed {
            crate::tls::count_failure(self.stats(), false, &e);
            self.remove(key, false);
        }
    }

    /// At exit: lets the kernel finish with the sockets of removed connections, so no
    /// request outlives the memory it refers to (bounded by [`EXIT_WAIT`]).
    fn finish(&mut self) {
        self.io.cancel_accept();
        let until = Instant::now() + EXIT_WAIT;
        while !self.io.closing.is_empty() {
            let now = Instant::now();
            if self.io.early.is_empty()
                && (now >= until || self.io.wait(Some(until - now)).is_err())
            {
                break;
            }
            let mut cqes = std::mem::take(&mut self.io.early);
            cqes.extend(
                self.io
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (ud, res, flags) in cqes {
                let (op, key, generation) = split_user_data(ud);
                match op {
                    OP_RECV => self.on_recv(key, generation, res, flags),
                    OP_SEND => self.on_send(key, generation, res),
                    _ => {}
                }
            }
        }
    }
}

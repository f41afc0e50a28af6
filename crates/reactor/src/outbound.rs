//! A connection's queue of bytes the kernel has not taken yet.
//!
//! Frames are shared `Bytes` (a push encoded once is queued by reference on every
//! recipient). Control frames wait in their own queue and go out at the next frame
//! boundary, ahead of queued data, and never count against the limit: a connection busy
//! receiving must still answer pings and receive its close frame. Pongs not yet sent are
//! bounded: up to [`OutboundLimits::max_pending_pongs`] wait, one per ping (clients and the
//! Autobahn suite count them), and past that the newest replaces the last waiting one
//! (RFC 6455 §5.5.3 allows answering only the latest ping), so a peer that pings and never
//! reads costs that many small frames.
//!
//! The limits bound the backlog, not the message: one message of any size the server
//! permits is accepted onto an empty queue, as nginx and uWebSockets do, so a push up to
//! the message limit is deliverable whatever the outbound limit.
//!
//! On a TLS connection the queue also seals: frames wait as plaintext (so the limits,
//! the pong rule and a slow consumer's discard work as above) and are encrypted only
//! when the socket can take them, one batch at a time ([`Outbound::seal`]); ciphertext,
//! whose records carry sequence numbers and so can be neither dropped nor reordered,
//! goes out first and alone.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

use crate::tls::{TlsError, TlsStream};

/// Most slices handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// Plaintext sealed at once, at most: what is sealed is no longer counted against the
/// limits (nor discarded from a slow consumer), so the batch bounds the ciphertext a
/// connection can hold besides them; a larger frame is sealed a batch at a time.
const SEAL_BATCH: usize = 64 * 1024;

/// The queue limit was reached: the consumer is too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Per-connection outbound limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Queued data bytes allowed.
    pub max_bytes: usize,
    /// Queued data frames allowed.
    pub max_messages: usize,
    /// Pongs waiting to be sent; a ping past them replaces the newest waiting pong.
    pub max_pending_pongs: usize,
}

impl OutboundLimits {
    /// The defaults, which the binary's configuration and `--help` take from here.
    pub const DEFAULT: OutboundLimits = OutboundLimits {
        max_bytes: 256 * 1024,
        max_messages: 256,
        // One pong per ping for a client pinging in bursts (Autobahn 2.10 sends ten).
        max_pending_pongs: 16,
    };
}

impl Default for OutboundLimits {
    fn default() -> Self {
        OutboundLimits::DEFAULT
    }
}

/// The queue. Empty, it holds no heap memory.
#[derive(Debug, Default)]
pub struct Outbound {
    /// The rest of the frame being written, wherever it came from.
    current: Option<Bytes>,
    /// A TLS connection's queue (boxed: a `ws://` connection pays one pointer for it):
    /// TLS output in the order it was made — records of sealed frames, handshake flights,
    /// alerts — written before any plaintext is sealed. Control and data frames of such a
    /// queue go out only sealed.
    sealed: Option<Box<Sealing>>,
    /// Pings, handshake bytes and at most `max_pending_pongs` pongs.
    control: VecDeque<Bytes>,
    data: VecDeque<Bytes>,
    data_bytes: usize,
    /// Frames handed to the kernel by a completion-based driver and not yet reported
    /// written ([`Outbound::take_for_send`]): how many, and of them the data frames and
    /// their bytes, which still count against the limits.
    in_flight: usize,
    in_flight_data: usize,
    in_flight_data_bytes: usize,
}

/// What a TLS connection's queue holds besides plaintext frames.
#[derive(Debug, Default)]
struct Sealing {
    /// TLS output in the order it was made.
    records: VecDeque<Bytes>,
    /// The unsealed rest of a frame larger than a batch (a reference to the shared frame,
    /// not a copy): sealed before anything else, since no frame may start inside another,
    /// and kept by a slow consumer's discard for the same reason.
    rest: Option<Bytes>,
}

/// A frame taken for an asynchronous send, and where it came from.
#[derive(Debug)]
pub struct InFlight {
    /// The frame's bytes (from where the previous send stopped).
    pub bytes: Bytes,
    from: From,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// The frame already being written (the rest of it).
    Current,
    Sealed,
    Control,
    /// A data frame (counted against the limits while in flight).
    Data,
}

impl Outbound {
    /// The queue of a TLS connection: frames go out only through [`Outbound::seal`].
    pub fn sealing() -> Outbound {
        Outbound {
            sealed: Some(Box::default()),
            ..Outbound::default()
        }
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
            && self
                .sealed
                .as_ref()
                .is_none_or(|s| s.records.is_empty() && s.rest.is_none())
            && self.control.is_empty()
            && self.data.is_empty()
            && self.in_flight == 0
    }

    /// Whether frames wait that no send has taken yet.
    pub fn has_unsent(&self) -> bool {
        self.current.is_some()
            || self
                .sealed
                .as_ref()
                .is_some_and(|s| !s.records.is_empty() || s.rest.is_some())
            || !self.control.is_empty()
            || !self.data.is_empty()
    }

    /// Whether an asynchronous send holds some of the queue.
    pub fn is_sending(&self) -> bool {
        self.in_flight > 0
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.data_bytes
            + self.current.as_ref().map_or(0, Bytes::len)
            + self.sealed.as_ref().map_or(0, |s| {
                s.records.iter().map(Bytes::len).sum::<usize>()
                    + s.rest.as_ref().map_or(0, Bytes::len)
            })
            + self.control.iter().map(Bytes::len).sum::<usize>()
    }

    /// Ciphertext waiting (a TLS connection's sealed records, the one being written
    /// included): at most about one batch, whatever the frames' sizes.
    pub fn sealed_bytes(&self) -> usize {
        self.sealed.as_ref().map_or(0, |s| {
            self.current.as_ref().map_or(0, Bytes::len)
                + s.records.iter().map(Bytes::len).sum::<usize>()
        })
    }

    /// Queues TLS output that is not a sealed frame (a handshake flight, a ticket, an
    /// alert, close_notify), behind the ciphertext already made.
    pub fn push_sealed(&mut self, ciphertext: Bytes) {
        match self.sealed.as_deref_mut() {
            Some(s) if !ciphertext.is_empty() => s.records.push_back(ciphertext),
            _ => debug_assert!(ciphertext.is_empty(), "ciphertext for a plain connection"),
        }
    }

    /// Encrypts the next batch — the rest of a frame cut by the last batch, then control
    /// frames, then data, as [`Outbound::flush`] orders them — once the ciphertext made
    /// before has gone: frames stay plaintext, counted and discardable, for as long as
    /// the socket is not taking them, and a frame larger than a batch is sealed a batch
    /// at a time.
    pub fn seal(&mut self, tls: &mut TlsStream) -> Result<(), TlsError> {
        let Some(sealing) = self.sealed.as_deref_mut() else {
            return Ok(());
        };
        if self.current.is_some() || !sealing.records.is_empty() || self.in_flight > 0 {
            return Ok(());
        }
        let mut out = Vec::new();
        let (mut plain, mut frames) = (0, 0);
        while plain < SEAL_BATCH && frames < MAX_IOVECS {
            let mut frame = if let Some(f) = sealing.rest.take() {
                f
            } else if let Some(f) = self.control.pop_front() {
                f
            } else if let Some(f) = self.data.pop_front() {
                self.data_bytes -= f.len();
                f
            } else {
                break;
            };
            let room = SEAL_BATCH - plain;
            if frame.len() > room {
                let head = frame.split_to(room);
                sealing.rest = Some(frame);
                frame = head;
            }
            tls.write_plain(&frame, &mut out)?;
            plain += frame.len();
            frames += 1;
        }
        if !out.is_empty() {
            sealing.records.push_back(Bytes::from(out));
        }
        Ok(())
    }

    /// Queues a control frame (or handshake bytes): never refused.
    pub fn push_control(&mut self, frame: Bytes) {
        self.control.push_back(frame);
    }

    /// Queues a pong behind those waiting; with `limits.max_pending_pongs` already
    /// waiting (none started), it replaces the newest of them instead. Kept in the control
    /// queue, told apart by opcode, so an idle connection pays for no slot.
    pub fn push_pong(&mut self, frame: Bytes, limits: &OutboundLimits) {
        let waiting = self.control.iter().filter(|f| is_pong(f)).count();
        if waiting < limits.max_pending_pongs.max(1) {
            self.control.push_back(frame);
        } else if let Some(newest) = self.control.iter_mut().rev().find(|f| is_pong(f)) {
            *newest = frame;
        }
    }

    /// Whether a data frame of `len` bytes would be accepted now.
    pub fn has_room(&self, len: usize, limits: &OutboundLimits) -> bool {
        let messages = self.data.len() + self.in_flight_data;
        messages == 0
            || (messages < limits.max_messages
                && self.data_bytes + self.in_flight_data_bytes + len <= limits.max_bytes)
    }

    /// Queues a data frame, unless that would pass the limits. A frame is always accepted
    /// when no data is queued.
    pub fn push_data(&mut self, frame: Bytes, limits: &OutboundLimits) -> Result<(), Overflow> {
        if !self.has_room(frame.len(), limits) {
            return Err(Overflow);
        }
        self.data_bytes += frame.len();
        self.data.push_back(frame);
        Ok(())
    }

    /// Queues a close frame after all queued data: never refused, since nothing follows it.
    pub fn push_close(&mut self, frame: Bytes) {
        self.data_bytes += frame.len();
        self.data.push_back(frame);
    }

    /// Drops queued data (not control frames, not the frame half written): used when a
    /// slow consumer is closed, so its close frame goes out next and its memory is freed.
    pub fn discard_data(&mut self) {
        self.data.clear();
        self.data_bytes = 0;
    }

    /// Writes as much as `w` takes with vectored writes, sealing with `tls` on a TLS
    /// connection. `Ok(n)` is the bytes written; the queue is empty or the writer said
    /// `WouldBlock`.
    pub fn flush<W: Write>(
        &mut self,
        mut tls: Option<&mut TlsStream>,
        w: &mut W,
    ) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            if let Some(tls) = tls.as_deref_mut() {
                self.seal(tls).map_err(io::Error::other)?;
            }
            let n = {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for b in self.in_order().take(MAX_IOVECS) {
                    slices[count] = IoSlice::new(b);
                    count += 1;
                }
                if count == 0 {
                    // Plaintext of a TLS connection flushed without its TLS state: it
                    // must wait rather than go out in the clear.
                    return Ok(total);
                }
                // One frame (the common case for a push or an echo) goes out with a plain
                // `send`, which the kernel handles with less work than a one-slice `writev`.
                let written = if count == 1 {
                    w.write(&slices[0])
                } else {
                    w.write_vectored(&slices[..count])
                };
                match written {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            total += n;
            self.consume(n);
        }
        Ok(total)
    }

    /// What `flush` writes, in order: ciphertext, then (unless the queue seals) plaintext.
    fn in_order(&self) -> impl Iterator<Item = &Bytes> {
        let plain = self
            .sealed
            .is_none()
            .then_some(self.control.iter().chain(self.data.iter()));
        self.current
            .iter()
            .chain(self.sealed.iter().flat_map(|s| s.records.iter()))
            .chain(plain.into_iter().flatten())
    }

    /// Moves up to `max` frames from the front (in the order `flush` writes them) into
    /// `into`, for a completion-based driver to send while they stay alive there. Until
    /// [`Outbound::finish_send`] they count against the limits, and frames queued
    /// meanwhile (a pong, say) go out after them. A sealing queue gives only ciphertext:
    /// [`Outbound::seal`] first.
    pub fn take_for_send(&mut self, into: &mut Vec<InFlight>, max: usize) {
        debug_assert_eq!(self.in_flight, 0, "one send at a time");
        while into.len() < max {
            let (bytes, from) = if let Some(f) = self.current.take() {
                (f, From::Current)
            } else if let Some(f) = self.sealed.as_mut().and_then(|s| s.records.pop_front()) {
                (f, From::Sealed)
            } else if self.sealed.is_some() {
                break;
            } else if let Some(f) = self.control.pop_front() {
                (f, From::Control)
            } else if let Some(f) = self.data.pop_front() {
                self.data_bytes -= f.len();
                self.in_flight_data += 1;
                self.in_flight_data_bytes += f.len();
                (f, From::Data)
            } else {
                break;
            };
            self.in_flight += 1;
            into.push(InFlight { bytes, from });
        }
    }

    /// The send of the frames `sent` (from [`Outbound::take_for_send`]) wrote `n` bytes:
    /// a frame cut short goes back to the front as the one being written, and frames not
    /// started go back to the front of their queues, in order.
    pub fn finish_send(&mut self, sent: &mut Vec<InFlight>, mut n: usize) {
        let mut first_unsent = sent.len();
        let mut cut = false;
        for (i, f) in sent.iter().enumerate() {
            if n >= f.bytes.len() {
                n -= f.bytes.len();
                continue;
            }
            first_unsent = i;
            cut = n > 0;
            break;
        }
        for (i, mut f) in sent.drain(..).enumerate().rev() {
            self.in_flight -= 1;
            if f.from == From::Data {
                self.in_flight_data -= 1;
                self.in_flight_data_bytes -= f.bytes.len();
            }
            if i < first_unsent {
                continue;
            }
            if i == first_unsent && cut {
                f.bytes.advance(n);
                self.current = Some(f.bytes);
                continue;
            }
            match f.from {
                From::Current => self.current = Some(f.bytes),
                From::Sealed => {
                    if let Some(s) = self.sealed.as_mut() {
                        s.records.push_front(f.bytes);
                    }
                }
                From::Control => self.control.push_front(f.bytes),
                From::Data => {
                    self.data_bytes += f.bytes.len();
                    self.data.push_front(f.bytes);
                }
            }
        }
    }

    /// Removes `n` written bytes from the front, in the order `flush` wrote them.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let next = self
                .current
                .take()
                .or_else(|| self.sealed.as_mut().and_then(|s| s.records.pop_front()));
            let mut frame = match next {
                Some(f) => f,
                None if self.sealed.is_some() => return,
                None => match self.control.pop_front() {
                    Some(f) => f,
                    None => match self.data.pop_front() {
                        Some(f) => {
                            self.data_bytes -= f.len();
                            f
                        }
                        None => return,
                    },
                },
            };
            if n < frame.len() {
                frame.advance(n);
                self.current = Some(frame);
                return;
            }
            n -= frame.len();
        }
    }
}

/// Whether a queued server frame is a pong (FIN set, opcode 0xA; server frames are never
/// masked or fragmented control frames).
fn is_pong(frame: &Bytes) -> bool {
    frame.first() == Some(&0x8A)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `budget` bytes per call, then blocks when it is spent.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.per_call).min(self.budget);
            self.out.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LIMITS: OutboundLimits = OutboundLimits {
        max_bytes: 100,
        max_messages: 3,
        max_pending_pongs: 4,
    };

    #[test]
    fn control_frames_jump_ahead_at_a_frame_boundary() {
        let mut q = Outbound::default();
        q.push_data(Bytes::from_static(b"AAAA"), &LIMITS).unwrap();
        q.push_data(Bytes::from_static(b"BBBB"), &LIMITS).unwrap();
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 2,
            budget: 2,
        };
        q.flush(None, &mut w).unwrap();
        // Half of A is out; a pong arrives; it must follow A, not split it.
        q.push_control(Bytes::from_static(b"pp"));
        w.budget = 100;
        q.flush(None, &mut w).unwrap();
        assert_eq!(w.out, b"AAAAppBBBB");
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn limits_refuse_data_but_never_control() {
        let mut q = Outbound::default();
        for _ in 0..3 {
            q.push_data(Bytes::from_static(b"x"), &LIMITS).unwrap();
        }
        assert_eq!(
            q.push_data(Bytes::from_static(b"x"), &LIMITS),
            Err(Overflow)
        );
        q.push_control(Bytes::from_static(b"close"));
        let mut q = Outbound::default();
        q.push_data(Bytes::from(vec![0; 60]), &LIMITS).unwrap();
        assert_eq!(
            q.push_data(Bytes::from(vec![0; 41]), &LIMITS),
            Err(Overflow)
        );
        q.push_data(Bytes::from(vec![0; 40]), &LIMITS).unwrap();
    }

    #[test]
    fn one_message_over_the_byte_limit_fits_an_empty_queue() {
        let mut q = Outbound::default();
        q.push_data(Bytes::from(vec![0; 1000]), &LIMITS).unwrap();
        assert_eq!(
            q.push_data(Bytes::from_static(b"x"), &LIMITS),
            Err(Overflow)
        );
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 400,
            budget: 400,
        };
        q.flush(None, &mut w).unwrap();
        // Half written, no data queued behind it: the next message is taken.
        q.push_data(Bytes::from(vec![1; 1000]), &LIMITS).unwrap();
        w.budget = usize::MAX;
        q.flush(None, &mut w).unwrap();
        assert_eq!(w.out.len(), 2000);
        assert!(q.is_empty());
    }

    #[test]
    fn each_ping_gets_its_pong_up_to_the_bound() {
        use protocol::frame::server_frame;
        use protocol::OpCode;
        let mut q = Outbound::default();
        let pongs: Vec<Bytes> = (0..LIMITS.max_pending_pongs as u32)
            .map(|i| server_frame(OpCode::Pong, &i.to_be_bytes()))
            .collect();
        for p in &pongs {
            q.push_pong(p.clone(), &LIMITS);
        }
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 1000,
            budget: 1000,
        };
        q.flush(None, &mut w).unwrap();
        assert_eq!(w.out, pongs.concat(), "one pong per ping, in order");
    }

    #[test]
    fn a_ping_flood_keeps_the_bound_of_pongs_the_newest_last() {
        use protocol::frame::server_frame;
        use protocol::OpCode;
        let mut q = Outbound::default();
        q.push_data(Bytes::from_static(b"DD"), &LIMITS).unwrap();
        let ping = server_frame(OpCode::Ping, b"hb");
        q.push_control(ping.clone());
        for i in 0..10_000u32 {
            q.push_pong(server_frame(OpCode::Pong, &i.to_be_bytes()), &LIMITS);
        }
        let pong = |i: u32| server_frame(OpCode::Pong, &i.to_be_bytes());
        let kept = LIMITS.max_pending_pongs as u32;
        let mut want = vec![ping.clone()];
        want.extend((0..kept - 1).map(pong));
        want.push(pong(9_999));
        want.push(Bytes::from_static(b"DD"));
        assert_eq!(q.queued_bytes(), want.iter().map(Bytes::len).sum::<usize>());
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 100,
            budget: 1000,
        };
        q.flush(None, &mut w).unwrap();
        assert_eq!(
            w.out,
            want.concat(),
            "the ping stays; the newest pong is last"
        );
    }

    #[test]
    fn close_goes_after_queued_data_and_is_never_refused() {
        let mut q = Outbound::default();
        for _ in 0..3 {
            q.push_data(Bytes::from_static(b"d"), &LIMITS).unwrap();
        }
        q.push_close(Bytes::from_static(b"C"));
        q.push_control(Bytes::from_static(b"p"));
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 100,
            budget: 100,
        };
        q.flush(None, &mut w).unwrap();
        assert_eq!(w.out, b"pdddC");
    }

    #[test]
    fn discard_keeps_the_half_written_frame_and_control() {
        let mut q = Outbound::default();
        q.push_data(Bytes::from_static(b"AAAA"), &LIMITS).unwrap();
        q.push_data(Bytes::from_static(b"BBBB"), &LIMITS).unwrap();
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 3,
            budget: 3,
        };
        q.flush(None, &mut w).unwrap();
        q.push_control(Bytes::from_static(b"cc"));
        q.discard_data();
        w.budget = 100;
        q.flush(None, &mut w).unwrap();
        assert_eq!(w.out, b"AAAAcc");
    }

    /// Plays an asynchronous send of `n` bytes; returns what it wrote.
    fn send_async(q: &mut Outbound, n: usize) -> Vec<u8> {
        let mut taken = Vec::new();
        q.take_for_send(&mut taken, 64);
        let all: Vec<u8> = taken.iter().flat_map(|f| f.bytes.to_vec()).collect();
        q.finish_send(&mut taken, n);
        all[..n.min(all.len())].to_vec()
    }

    #[test]
    fn async_sends_keep_order_across_short_writes_and_frames_queued_meanwhile() {
        let mut q = Outbound::default();
        q.push_data(Bytes::from_static(b"AAAA"), &LIMITS).unwrap();
        q.push_data(Bytes::from_static(b"BBBB"), &LIMITS).unwrap();
        let mut taken = Vec::new();
        q.take_for_send(&mut taken, 64);
        assert!(!q.has_unsent() && q.is_sending() && !q.is_empty());
        // While in flight the frames still count against the limits.
        q.push_data(Bytes::from_static(b"C"), &LIMITS).unwrap();
        assert_eq!(
            q.push_data(Bytes::from_static(b"D"), &LIMITS),
            Err(Overflow)
        );
        // A pong arrives during the send, which stops halfway through A.
        q.push_pong(Bytes::from_static(b"pp"), &LIMITS);
        q.finish_send(&mut taken, 2);
        assert!(!q.is_sending());
        let mut out = b"AA".to_vec();
        out.extend(send_async(&mut q, 100));
        assert_eq!(out, b"AAAAppBBBBC", "the rest of A, then the pong, then B");
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
        q.push_data(Bytes::from_static(b"x"), &LIMITS).unwrap();
        q.push_data(Bytes::from_static(b"y"), &LIMITS).unwrap();
        q.push_data(Bytes::from_static(b"z"), &LIMITS).unwrap();
    }

    #[test]
    fn an_async_send_that_wrote_nothing_loses_nothing() {
        let mut q = Outbound::default();
        q.push_control(Bytes::from_static(b"c"));
        q.push_data(Bytes::from_static(b"dd"), &LIMITS).unwrap();
        assert_eq!(send_async(&mut q, 0), b"");
        assert_eq!(q.queued_bytes(), 3);
        assert_eq!(send_async(&mut q, 2), b"cd");
        assert_eq!(send_async(&mut q, 1), b"d");
        assert!(q.is_empty());
    }
}

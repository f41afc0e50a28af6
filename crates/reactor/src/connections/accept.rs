//! Accepting: the accept rate, and the bound on pending handshakes that keeps slow
//! handshakes from locking honest clients out without resetting a reconnect storm.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use session::{Session, Transport};

use super::{Conn, Gauge, Reactor};
use crate::admission::Verdict;
use crate::driver::Driver;
use crate::outbound::Outbound;

/// At the pending-handshake bound, how long a connection that sent part of its request
/// and stopped may keep its slot (at most the pressure timeout). A request split over
/// several segments arrives within a round trip's few milliseconds.
const PARTIAL_REQUEST_GRACE: Duration = Duration::from_millis(100);
/// Back-off after `accept` fails for lack of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The two pending-handshake queues.
#[derive(Debug, Clone, Copy)]
pub(super) enum Order {
    /// Every pending handshake, by accept time.
    Accepted,
    /// Those that sent part of a request, by when that was seen.
    Partial,
}

impl<D: Driver> Reactor<D> {
    pub(crate) fn accept_loop(&mut self) {
        if self.drain.is_some() {
            return;
        }
        self.accept_blocked = false;
        loop {
            if !self.may_accept() {
                return;
            }
            if !self.make_room_for_handshake(Instant::now()) {
                // The rest wait in the kernel's backlog: this turn's reads complete the
                // handshakes in hand, and the end of the turn tries again.
                self.accept_blocked = true;
                return;
            }
            match self.io.accept() {
                Ok((stream, peer)) => self.on_accept(stream, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: pending connections stay in the
                    // backlog; try again shortly.
                    self.stats.accept_errors.add(1);
                    tracing::warn!(reactor = self.id, error = %e, "accept failed; backing off");
                    self.accept_resume_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Admission control local to this reactor: the accept rate. (Pending handshakes
    /// never stop accepting; see [`Reactor::make_room_for_handshake`].)
    pub(super) fn may_accept(&mut self) -> bool {
        let rate = self.config.max_accept_rate;
        if rate > 0 {
            let now = Instant::now();
            let elapsed = now
                .saturating_duration_since(self.accept_refill_at)
                .as_secs_f64();
            self.accept_refill_at = now;
            let burst = f64::from(rate.max(1)) / 10.0 + 1.0;
            self.accept_tokens = (self.accept_tokens + elapsed * f64::from(rate)).min(burst);
            if self.accept_tokens < 1.0 {
                let wait = (1.0 - self.accept_tokens) / f64::from(rate);
                self.accept_resume_at = Some(now + Duration::from_secs_f64(wait));
                return false;
            }
            self.accept_tokens -= 1.0;
        }
        true
    }

    pub(super) fn on_accept(&mut self, stream: TcpStream, ip: IpAddr) {
        let verdict = self.admission.admit(ip);
        if verdict == Verdict::Drop {
            self.stats.count_rejected(503);
            return;
        }
        // Latency matters more than packet count for pushes.
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let reject = match verdict {
            Verdict::Refuse(status) => Some(status),
            _ => None,
        };
        let tls = match self.config.tls.as_ref().map(|t| t.accept()).transpose() {
            Ok(tls) => tls.map(|mut t| {
                t.limit_handshake(self.config.tls_max_handshake_bytes);
                Box::new(t)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "TLS state for a new connection");
                self.admission.release(ip, verdict);
                return;
            }
        };
        let now = Instant::now();
        self.next_generation = self.next_generation.wrapping_add(1);
        let mut conn = Conn {
            stream,
            io: D::ConnIo::default(),
            ip,
            verdict,
            generation: self.next_generation,
            session: Session::new(now, reject, &self.config.session),
            out: if tls.is_some() {
                Outbound::sealing()
            } else {
                Outbound::default()
            },
            tls,
            tls_closed: false,
            timer: None,
            close_after_flush: false,
            write_shut: false,
            gauge: Gauge::Handshaking,
            push_endpoint: false,
            transport: Transport::Ws,
            partial_listed: false,
            dirty: false,
            opening: false,
        };
        if let Err(e) = self.io.add(key, &mut conn) {
            tracing::warn!(error = %e, "register failed");
            self.admission.release(ip, verdict);
            return;
        }
        entry.insert(conn);
        self.stats.accepted.add(1);
        self.stats.connections.add(1);
        self.stats.handshaking.add(1);
        self.handshake_order
            .push_back((key, self.next_generation, now));
        self.rearm(key, now);
    }

    /// Whether one more connection may start its handshake: below the pending-handshake
    /// bound, or once the oldest pending handshake has been reset to make room.
    ///
    /// Pausing `accept` until handshakes finish (the first design) let 1 024 connections
    /// that dribble their request a byte a second shut out every honest client until the
    /// handshake timeout freed slots. Evicting the oldest at once (the second) reset
    /// honest clients in a reconnect storm: a burst of 10 000 connects was accepted faster
    /// than their requests were read, and each accept evicted one accepted a moment
    /// before. So under pressure the handshake timeout shortens: a handshake pending for
    /// `pressure_handshake_timeout` is reset to make room (an honest client sends its
    /// request in one go, so it is never that old at the bound), and a younger one only
    /// makes the rest wait in the kernel's backlog for this turn's reads.
    pub(super) fn make_room_for_handshake(&mut self, now: Instant) -> bool {
        let bound = self.config.max_pending_handshakes.max(1);
        let silent_after = self.config.pressure_handshake_timeout;
        let partial_after = silent_after.min(PARTIAL_REQUEST_GRACE);
        while self.stats.handshaking.get() as usize >= bound {
            // Stalled midway through a request first: no honest client does that for long.
            let partial = self.oldest_pending(Order::Partial);
            if let Some((key, _, _)) = partial.filter(|p| now >= p.2 + partial_after) {
                self.partial_order.pop_front();
                self.evict_handshake(key);
                continue;
            }
            let any = self.oldest_pending(Order::Accepted);
            if let Some((key, _, _)) = any.filter(|a| now >= a.2 + silent_after) {
                self.handshake_order.pop_front();
                self.evict_handshake(key);
                continue;
            }
            let next = [
                partial.map(|p| p.2 + partial_after),
                any.map(|a| a.2 + silent_after),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(t) = next {
                self.accept_resume_at = Some(self.accept_resume_at.map_or(t, |r| r.min(t)));
            }
            return false;
        }
        // Entries of connections that finished their handshake pile up behind a slow one
        // at the front; compact once they outnumber the live ones.
        let live = self.stats.handshaking.get() as usize;
        for order in [&mut self.handshake_order, &mut self.partial_order] {
            if order.len() > 2 * live + 64 {
                let conns = &self.conns;
                order.retain(|&(key, generation, _)| {
                    conns.get(key).is_some_and(|c| {
                        c.generation == generation && c.gauge == Gauge::Handshaking
                    })
                });
            }
        }
        true
    }

    /// The front of one of the pending-handshake queues, after dropping entries of
    /// connections no longer handshaking.
    pub(super) fn oldest_pending(&mut self, which: Order) -> Option<(usize, u32, Instant)> {
        loop {
            let order = match which {
                Order::Accepted => &self.handshake_order,
                Order::Partial => &self.partial_order,
            };
            let &(key, generation, at) = order.front()?;
            if self.is_handshaking(key, generation) {
                return Some((key, generation, at));
            }
            match which {
                Order::Accepted => self.handshake_order.pop_front(),
                Order::Partial => self.partial_order.pop_front(),
            };
        }
    }

    pub(super) fn evict_handshake(&mut self, key: usize) {
        self.stats.handshakes_evicted.add(1);
        self.remove(key, true);
    }

    /// Lists a connection that has sent part of its request, once.
    pub(super) fn note_partial_request(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.partial_listed || c.gauge != Gauge::Handshaking || !c.session.handshake_partial() {
            return;
        }
        c.partial_listed = true;
        self.partial_order
            .push_back((key, c.generation, Instant::now()));
    }

    pub(super) fn is_handshaking(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation && c.gauge == Gauge::Handshaking)
    }
}

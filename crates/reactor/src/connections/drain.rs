//! Shutdown: stop accepting and close every connection with 1001, spread over the drain
//! window so clients do not all reconnect at the same moment.

use std::time::{Duration, Instant};

use protocol::CloseCode;

use super::Reactor;
use crate::driver::Driver;

#[derive(Debug)]
pub(super) struct DrainPlan {
    targets: Vec<(usize, u32)>,
    next: usize,
    start: Instant,
    window: Duration,
}

impl<D: Driver> Reactor<D> {
    pub(super) fn start_drain(&mut self, window: Duration, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        self.io.stop_accepting();
        // The service listener stays up through the drain: health checks and scrapes
        // see a draining node (503 on `/readyz`) rather than a refused connection.
        let mut targets = Vec::new();
        let mut handshaking = Vec::new();
        for (key, c) in self.conns.iter() {
            if c.session.is_open() {
                targets.push((key, c.generation));
            } else if c.session.is_handshaking() {
                handshaking.push(key);
            }
        }
        for key in handshaking {
            self.remove(key, false);
        }
        self.drain = Some(DrainPlan {
            targets,
            next: 0,
            start: now,
            window,
        });
    }

    /// Closes the connections whose turn has come; true when the reactor may exit.
    pub(super) fn advance_drain(&mut self, now: Instant) -> bool {
        let Some(plan) = self.drain.as_mut() else {
            return false;
        };
        let mut due = Vec::new();
        while plan.next < plan.targets.len() && plan.slot_time(plan.next) <= now {
            due.push(plan.targets[plan.next]);
            plan.next += 1;
        }
        let finished_at = plan.start + plan.window + self.config.session.close_timeout;
        for (key, generation) in due {
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == generation)
            {
                self.with_session(key, |s, cx, fx| {
                    s.close(CloseCode::GOING_AWAY, "server shutting down", cx, fx)
                });
            }
        }
        let all_sent = self
            .drain
            .as_ref()
            .is_some_and(|p| p.next >= p.targets.len());
        if all_sent && self.conns.is_empty() {
            return true;
        }
        if now >= finished_at {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.remove(key, false);
            }
            return true;
        }
        false
    }
}

impl DrainPlan {
    /// When the `i`-th connection is closed: evenly over the window, so clients do not
    /// all reconnect at the same moment.
    pub(super) fn slot_time(&self, i: usize) -> Instant {
        let n = self.targets.len().max(1) as u32;
        self.start + self.window / n * i as u32
    }

    /// The next moment the drain has work: a close to send, or, once all are sent, the
    /// end of the close timeout (peers answering wake the loop themselves; polling with a
    /// past deadline meanwhile would spin).
    pub(super) fn next_due(&self, close_timeout: Duration) -> Instant {
        if self.next < self.targets.len() {
            self.slot_time(self.next)
        } else {
            self.start + self.window + close_timeout
        }
    }
}

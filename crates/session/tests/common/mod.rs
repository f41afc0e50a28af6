//! A session driven by hand on a virtual clock: what the reactor does for it, minus the
//! sockets, so tests move `now` themselves and read what the session asked for.
#![allow(dead_code, unreachable_pub)] // Each test file uses a different part of the harness.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use session::{Codecs, ConnId, Ctx, Effects, Session, SessionConfig};

/// A session, its driver's shared state and a virtual clock.
pub struct Harness {
    pub config: SessionConfig,
    pub codecs: Codecs,
    pub session: Session,
    pub now: Instant,
    /// What the last call asked for.
    pub fx: Effects,
}

impl Harness {
    pub fn new(config: SessionConfig) -> Self {
        let now = Instant::now();
        Harness {
            codecs: Codecs::new(&config),
            session: Session::new(now, None, &config),
            config,
            now,
            fx: Effects::default(),
        }
    }

    /// Runs `f` on the session with a fresh effects sink, kept in `fx`.
    pub fn call(&mut self, f: impl FnOnce(&mut Session, &mut Ctx<'_>, &mut Effects)) {
        let mut fx = std::mem::take(&mut self.fx);
        fx.clear();
        let mut session = std::mem::replace(
            &mut self.session,
            Session::new(self.now, None, &self.config),
        );
        let mut cx = Ctx {
            config: &self.config,
            codecs: &mut self.codecs,
            now: self.now,
            conn_id: ConnId {
                reactor: 0,
                slot: 1,
                generation: 1,
            },
        };
        f(&mut session, &mut cx, &mut fx);
        self.session = session;
        self.fx = fx;
    }

    pub fn input(&mut self, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.call(|s, cx, fx| s.handle_input(&mut input, cx, fx));
    }

    /// Moves the clock on and fires the timer if it is due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        let due = self
            .session
            .next_deadline(&self.config)
            .is_some_and(|d| d <= self.now);
        if due {
            self.call(|s, cx, fx| s.handle_timeout(cx, fx));
        } else {
            self.fx.clear();
        }
    }

    pub fn deadline_in(&self) -> Duration {
        self.session
            .next_deadline(&self.config)
            .expect("a deadline")
            .saturating_duration_since(self.now)
    }
}

//! Deferred answers of the control listener: a request whose answer depends on another
//! thread (JetStream's acknowledgement of a push, the other nodes' presence answers) is
//! parked instead of waited for, so the reactor keeps serving everything else.
//!
//! [`Parking::park`] gives the [`Service`](crate::Service) a [`Completion`]: a ticket that
//! can cross threads and names the connection by reactor, slab key and a per-reactor
//! token (slab keys are reused; the token is never). [`Completion::complete`] sends the
//! answer back through the reactor's answer queue, which is unbounded and never refuses:
//! what it can hold is bounded by the parked requests, one per connection, and by the
//! deadlines of whoever holds the completions. A completion dropped unanswered answers
//! [`Unanswered::Dropped`] (the service writes a 503); a request still parked at its
//! deadline is answered [`Unanswered::TimedOut`] from the reactor's timer (a 504). An
//! answer that finds its connection gone, or its request already answered, is dropped.

use std::time::{Duration, Instant};

use crate::inbox::ReactorHandle;

/// Why a parked request got no answer from its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The completion was dropped without an answer (its holder gave up or went away).
    Dropped,
    /// The request's deadline passed first.
    TimedOut,
}

/// An answer on its way back to the reactor (`None`: the completion was dropped).
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) key: usize,
    pub(crate) token: u64,
    pub(crate) answer: Option<Vec<u8>>,
}

/// What a connection with a parked request remembers of it (opaque outside the
/// reactor).
#[derive(Debug, Clone, Copy)]
pub struct Parked {
    pub(crate) token: u64,
    pub(crate) deadline: Instant,
    /// The connection stays open after the answer.
    pub(crate) keep_alive: bool,
}

/// The right to answer one parked request, from any thread, once.
#[derive(Debug)]
pub struct Completion {
    handle: ReactorHandle,
    key: usize,
    token: u64,
    sent: bool,
}

impl Completion {
    /// Answers the parked request with `answer` (the whole response, as the service
    /// would have written it). Never blocks; never refused.
    pub fn complete(mut self, answer: Vec<u8>) {
        self.send(Some(answer));
    }

    fn send(&mut self, answer: Option<Vec<u8>>) {
        self.sent = true;
        let _ = self.handle.answers.send(Answered {
            key: self.key,
            token: self.token,
            answer,
        });
        self.handle.wake();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.sent {
            self.send(None);
        }
    }
}

/// Lets a [`Service`](crate::Service) park the request it is answering (see the module
/// documentation). Given to every call of `serve`.
#[derive(Debug)]
pub struct Parking<'a> {
    pub(crate) handle: Option<&'a ReactorHandle>,
    pub(crate) key: usize,
    pub(crate) next_token: &'a mut u64,
    pub(crate) parked: &'a mut Option<Parked>,
    pub(crate) now: Instant,
}

impl Parking<'_> {
    /// Parks the request being answered: nothing is written for it now, the requests
    /// behind it wait (pipelining order is kept), and the connection is read no further
    /// until it is answered, at most `timeout` from now. `keep_alive`: the connection
    /// stays open after the answer. The service must return from `serve` right after.
    /// `None` when this listener cannot park (the service then answers at once).
    pub fn park(&mut self, timeout: Duration, keep_alive: bool) -> Option<Completion> {
        let handle = self.handle?;
        if self.parked.is_some() {
            return None;
        }
        *self.next_token += 1;
        let token = *self.next_token;
        *self.parked = Some(Parked {
            token,
            deadline: self.now + timeout,
            keep_alive,
        });
        Some(Completion {
            handle: handle.clone(),
            key: self.key,
            token,
            sent: false,
        })
    }

    /// Whether a request was parked in this call.
    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// A parking lot that never parks: for services called outside a reactor (tests).
    pub fn unavailable<'a>(next_token: &'a mut u64, parked: &'a mut Option<Parked>) -> Parking<'a> {
        Parking {
            handle: None,
            key: 0,
            next_token,
            parked,
            now: Instant::now(),
        }
    }
}

//! Per-reactor bookkeeping: which user and rooms each connection of the reactor has. It
//! lives on the reactor's thread (no lock), and keeps the shared registry in step.

use std::sync::Arc;

use reactor::{ConnRef, Hooks, ReactorStats};
use session::client_protocol::RequestError;
use session::ClientRequest;

use crate::room_presence::RoomListTask;
use crate::rooms::{Outcome, RoomOp, RoomTask};
use crate::router::Router;

/// `ConnInfo::replayed_from` after the first request.
const FIRST_REQUEST_SEEN: u64 = u64::MAX;

/// Most rooms one connection may be in; joins past it are ignored and counted as drops.
pub const MAX_ROOMS_PER_CONNECTION: usize = 256;

#[derive(Debug)]
struct ConnInfo {
    uid: Arc<str>,
    rooms: Vec<Arc<str>>,
    /// The device and resume point, when either differs from the defaults (the default
    /// device, a replay from 0, no request yet): one pointer for an idle connection.
    extra: Option<Box<ConnExtra>>,
}

#[derive(Debug)]
struct ConnExtra {
    /// `?device=` (`None`: the default device).
    device: Option<Arc<str>>,
    /// Where the replay behind `welcome` started; [`FIRST_REQUEST_SEEN`] once the first
    /// request came (a `resume` is only taken as the first).
    replayed_from: u64,
    /// The highest seq this connection acked: an older ack is not sent on (in a cluster
    /// the stored ack is the last one sent, so it must not go back).
    acked: u64,
}

/// The reactor's hooks.
#[derive(Debug)]
pub struct RouterHooks {
    router: Arc<Router>,
    stats: Arc<ReactorStats>,
    /// Indexed by the connection's slab index in this reactor (dense, no hashing); the
    /// generation tells a live entry from a stale reference.
    conns: Vec<Option<(u32, ConnInfo)>>,
}

impl RouterHooks {
    /// Hooks for one reactor, counting into its `stats`.
    pub fn new(router: Arc<Router>, stats: Arc<ReactorStats>) -> Self {
        RouterHooks {
            router,
            stats,
            conns: Vec::new(),
        }
    }
}

/// The live entry for `conn`, if any.
fn info_mut(conns: &mut [Option<(u32, ConnInfo)>], conn: ConnRef) -> Option<&mut ConnInfo> {
    match conns.get_mut(conn.index as usize) {
        Some(Some((g, info))) if *g == conn.generation => Some(info),
        _ => None,
    }
}

impl RouterHooks {
    /// A `/ws` client's well-formed request (`send`, `join`, `leave`, ...).
    pub fn on_request(&mut self, conn: ConnRef, request: ClientRequest) {
        let Some(info) = info_mut(&mut self.conns, conn) else {
            return;
        };
        let extra = info.extra.get_or_insert_with(|| {
            Box::new(ConnExtra {
                device: None,
                replayed_from: 0,
                acked: 0,
            })
        });
        let replayed_from = std::mem::replace(&mut extra.replayed_from, FIRST_REQUEST_SEEN);
        match request {
            ClientRequest::Resume { since } => {
                let result = match replayed_from {
                    FIRST_REQUEST_SEEN => Err(session::client_protocol::RESUME_NOT_FIRST),
                    from => self.router.resume(
                        &info.uid,
                        conn,
                        since,
                        crate::router::Opened {
                            replayed_from: from,
                        },
                    ),
                };
                if let Err(e) = result {
                    self.reply(conn, e.code, e.message);
                }
            }
            ClientRequest::Ack { seq } => {
                let Some(extra) = info.extra.as_mut() else {
                    return;
                };
                if seq <= extra.acked && seq > 0 {
                    return;
                }
                match self.router.ack(&info.uid, extra.device.as_deref(), seq) {
                    Ok(()) => extra.acked = seq,
                    Err(e) => self.reply(conn, e.code, e.message),
                }
            }
            ClientRequest::Send { to, data } => {
                let uid = Arc::clone(&info.uid);
                if let Err(e) = self.client_send(&uid, &to, &data) {
                    self.reply(conn, e.code, e.message);
                }
            }
            ClientRequest::Join { room, since } => {
                if info.rooms.iter().any(|r| **r == *room) {
                    return;
                }
                if info.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    self.stats.count_dropped("room_limit", 1);
                    return;
                }
                let (room, result) = self.router.join_since(&room, conn, since);
                info.rooms.push(room);
                if let Err(e) = result {
                    self.reply(conn, e.code, e.message);
                }
            }
            ClientRequest::Leave { room } => {
                if let Some(i) = info.rooms.iter().position(|r| **r == *room) {
                    let room = info.rooms.swap_remove(i);
                    self.router.leave(&room, conn);
                }
            }
            ClientRequest::Ping => {}
        }
    }

    /// The server puts `conn` in `room` (the API, or the token's `subs` claim), within
    /// [`MAX_ROOMS_PER_CONNECTION`]. The client is told with `joined` first, so that the
    /// room's messages, which can only be dispatched once the registry has the member,
    /// come after it in the reactor's inbox.
    /// `None`: the connection is not (or no longer) this reactor's.
    fn server_join(&mut self, conn: ConnRef, room: &str) -> Option<Outcome> {
        let info = info_mut(&mut self.conns, conn)?;
        if info.rooms.iter().any(|r| **r == *room) {
            return Some(Outcome::Unchanged);
        }
        if info.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            self.stats.count_dropped("room_limit", 1);
            return Some(Outcome::Refused);
        }
        self.router
            .deliver_to(conn, session::messages::joined_by_server(room));
        // Without `since` a join replays nothing and cannot fail.
        let (room, _) = self.router.join_since(room, conn, None);
        info.rooms.push(room);
        Some(Outcome::Changed)
    }

    /// The server takes `conn` out of `room`; `left` goes after the last of its messages
    /// already dispatched to the connection.
    fn server_leave(&mut self, conn: ConnRef, room: &str) -> Option<Outcome> {
        let info = info_mut(&mut self.conns, conn)?;
        let Some(i) = info.rooms.iter().position(|r| **r == *room) else {
            return Some(Outcome::Unchanged);
        };
        let room = info.rooms.swap_remove(i);
        self.router.leave(&room, conn);
        self.router
            .deliver_to(conn, session::messages::left_by_server(&room));
        Some(Outcome::Changed)
    }

    /// A client's `send` from `uid` (`/ws` or `POST /send`): delivers it, and says why
    /// not when it was not taken.
    fn client_send(&self, uid: &str, to: &[String], data: &[u8]) -> Result<(), RequestError> {
        // `from` is the sender's authenticated ID, never anything the client said.
        // On a clustered node this does not wait for the stores (a reactor must not).
        let outcome = self.router.send_from_client(to, uid, data).outcome;
        self.stats
            .count_dropped("offline", outcome.offline_users as u64);
        if outcome.refused > 0 {
            Err(RequestError {
                code: "unavailable",
                message: "node saturated; retry later",
            })
        } else if let Err(e) = outcome.bus {
            // Delivered here only; the sender learns so rather than assuming.
            self.stats.count_dropped("bus", to.len() as u64);
            Err(RequestError {
                code: "unavailable",
                message: e.as_str(),
            })
        } else {
            Ok(())
        }
    }

    /// Sends `{"type":"error",...}` to one connection, through its reactor's inbox like
    /// any delivery.
    fn reply(&self, conn: ConnRef, code: &'static str, message: &'static str) {
        let body = session::client_protocol::error_json(RequestError { code, message });
        self.router.deliver_to(conn, Router::text_frame(&body));
    }
}

impl Hooks for RouterHooks {
    fn open(
        &mut self,
        conn: ConnRef,
        uid: &str,
        device: Option<&str>,
        since: Option<u64>,
    ) -> Option<session::Welcome> {
        let (uid, welcome, opened) = self.router.open_user(uid, conn, device, since);
        self.router.conn_event(&uid, device, conn, true);
        // Pending: `welcomed` says where the replay started.
        let pending = welcome.is_none();
        let i = conn.index as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        self.conns[i] = Some((
            conn.generation,
            ConnInfo {
                uid,
                rooms: Vec::new(),
                extra: (pending || device.is_some() || opened.replayed_from != 0).then(|| {
                    Box::new(ConnExtra {
                        device: device.map(Arc::from),
                        replayed_from: opened.replayed_from,
                        acked: 0,
                    })
                }),
            },
        ));
        welcome
    }

    fn welcomed(&mut self, conn: ConnRef, opened: u64) {
        let Some(extra) = info_mut(&mut self.conns, conn).and_then(|i| i.extra.as_mut()) else {
            return;
        };
        // A `resume` sent before the welcome came has been answered already.
        if extra.replayed_from != FIRST_REQUEST_SEEN {
            extra.replayed_from = opened;
        }
    }

    fn on_session_event(&mut self, conn: ConnRef, event: session::Event) {
        if let session::Event::Request(request) = event {
            match &request {
                ClientRequest::Send { .. } => self.stats.client_sends.add(1),
                _ => self.stats.client_room_ops.add(1),
            }
            self.on_request(conn, request);
        }
    }

    fn send(&mut self, uid: &str, to: &[String], data: &bytes::Bytes) -> Result<(), RequestError> {
        self.stats.client_sends.add(1);
        self.client_send(uid, to, data)
    }

    fn subscribe(&mut self, conn: ConnRef, rooms: &[String]) {
        for room in rooms {
            if let Some(outcome) = self.server_join(conn, room) {
                self.router.room_stats().count(RoomOp::Join, outcome);
            }
        }
    }

    fn on_task(&mut self, conn: ConnRef, task: &(dyn std::any::Any + Send + Sync)) {
        if let Some(t) = task.downcast_ref::<RoomListTask>() {
            if let Some(info) = info_mut(&mut self.conns, conn) {
                let device = info.extra.as_ref().and_then(|e| e.device.as_deref());
                t.found(conn, &info.uid, device);
            }
            return;
        }
        let Some(t) = task.downcast_ref::<RoomTask>() else {
            return;
        };
        let outcome = match t.op {
            RoomOp::Join => self.server_join(conn, &t.room),
            RoomOp::Leave => self.server_leave(conn, &t.room),
        };
        if let Some(outcome) = outcome {
            t.done(outcome);
        }
    }

    fn on_close(&mut self, conn: ConnRef) {
        let slot = self.conns.get_mut(conn.index as usize);
        let live = slot
            .as_ref()
            .is_some_and(|s| s.as_ref().is_some_and(|(g, _)| *g == conn.generation));
        if let Some((_, info)) = slot.filter(|_| live).and_then(Option::take) {
            for room in &info.rooms {
                self.router.leave(room, conn);
            }
            self.router.close_user(&info.uid, conn);
            let device = info.extra.as_ref().and_then(|e| e.device.as_deref());
            self.router.conn_event(&info.uid, device, conn, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Kind;

    fn c(index: u32, generation: u32) -> ConnRef {
        ConnRef {
            reactor: 0,
            index,
            generation,
        }
    }

    #[test]
    fn server_joins_respect_the_room_limit_and_are_tallied() {
        use crate::rooms::{RoomTally, RoomTask};
        let router = Arc::new(Router::new());
        let mut h = RouterHooks::new(Arc::clone(&router), Arc::default());
        let _ = h.open(c(1, 1), "eve", None, None);
        let subs: Vec<String> = (0..MAX_ROOMS_PER_CONNECTION)
            .map(|i| format!("r{i}"))
            .collect();
        h.subscribe(c(1, 1), &subs);
        assert_eq!(router.registry().rooms(), MAX_ROOMS_PER_CONNECTION);
        let (tx, rx) = crossbeam_channel::unbounded();
        let run = |h: &mut RouterHooks, op, room: &str| {
            let tx = tx.clone();
            let tally = RoomTally::new(Some(Box::new(move |counts| {
                let _ = tx.send(counts);
            })));
            tally.addressed(2);
            let task = RoomTask::shared(op, room, tally, Arc::clone(router.room_stats()));
            // A stale reference is not reached; the live one is.
            h.on_task(c(1, 0), &*task);
            h.on_task(c(1, 1), &*task);
        };
        run(&mut h, RoomOp::Join, "one-more");
        let got = rx.try_recv().unwrap();
        assert_eq!((got.refused, got.unreached), (1, 1));
        run(&mut h, RoomOp::Leave, "r0");
        assert_eq!(rx.try_recv().unwrap().changed, 1);
        run(&mut h, RoomOp::Join, "one-more");
        assert_eq!(rx.try_recv().unwrap().changed, 1);
        run(&mut h, RoomOp::Join, "one-more");
        assert_eq!(rx.try_recv().unwrap().unchanged, 1);
        assert!(router.registry().contains(Kind::Room, "one-more"));
        assert!(!router.registry().contains(Kind::Room, "r0"));
        h.on_close(c(1, 1));
        assert_eq!(router.registry().rooms(), 0, "every room left at close");
    }

    #[test]
    fn stale_references_leave_the_slot_alone() {
        let router = Arc::new(Router::new());
        let mut h = RouterHooks::new(Arc::clone(&router), Arc::default());
        let _ = h.open(c(5, 1), "alice", None, None);
        h.on_request(
            c(5, 1),
            ClientRequest::Join {
                room: "r".into(),
                since: None,
            },
        );
        // A request or close for an older occupant of slot 5 does nothing.
        h.on_request(c(5, 0), ClientRequest::Leave { room: "r".into() });
        h.on_close(c(5, 0));
        h.on_close(c(9, 1));
        assert!(router.registry().contains(Kind::User, "alice"));
        assert!(router.registry().contains(Kind::Room, "r"));
        h.on_close(c(5, 1));
        assert!(!router.registry().contains(Kind::User, "alice"));
        assert!(!router.registry().contains(Kind::Room, "r"));
        // The slot is reused by the next connection.
        let _ = h.open(c(5, 2), "bob", None, None);
        assert_eq!(router.registry().users_online(), 1);
    }
}

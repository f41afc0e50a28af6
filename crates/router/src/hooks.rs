//! Per-reactor bookkeeping: which user and rooms each connection of the reactor has. It
//! lives on the reactor's thread (no lock), and keeps the shared registry in step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use reactor::{ConnRef, Hooks, ReactorStats};
use session::client_protocol::RequestError;
use session::ClientRequest;

use crate::router::Router;

/// Most rooms one connection may be in; joins past it are ignored and counted as drops.
pub const MAX_ROOMS_PER_CONNECTION: usize = 256;

#[derive(Debug)]
struct ConnInfo {
    uid: Arc<str>,
    rooms: Vec<Arc<str>>,
}

/// The reactor's hooks.
#[derive(Debug)]
pub struct RouterHooks {
    router: Arc<Router>,
    stats: Arc<ReactorStats>,
    conns: HashMap<ConnRef, ConnInfo>,
}

impl RouterHooks {
    /// Hooks for one reactor, counting into its `stats`.
    pub fn new(router: Arc<Router>, stats: Arc<ReactorStats>) -> Self {
        RouterHooks {
            router,
            stats,
            conns: HashMap::new(),
        }
    }
}

impl RouterHooks {
    /// Sends `{"type":"error",...}` to one connection, through its reactor's inbox like
    /// any delivery.
    fn reply(&self, conn: ConnRef, code: &'static str, message: &'static str) {
        let body = session::client_protocol::error_json(RequestError { code, message });
        self.router.deliver_to(conn, Router::text_frame(&body));
    }
}

impl Hooks for RouterHooks {
    fn on_open(&mut self, conn: ConnRef, uid: &str, _device: Option<&str>) {
        let uid = self.router.add_user(uid, conn);
        self.conns.insert(
            conn,
            ConnInfo {
                uid,
                rooms: Vec::new(),
            },
        );
    }

    fn on_request(&mut self, conn: ConnRef, request: ClientRequest) {
        let Some(info) = self.conns.get_mut(&conn) else {
            return;
        };
        match request {
            ClientRequest::Send { to, data } => {
                // `from` is the sender's authenticated ID, never anything the client said.
                let body = Router::msg_body(&info.uid, &data);
                let outcome = self.router.push(&to, &[] as &[&str], body, Instant::now());
                self.stats
                    .count_dropped("offline", outcome.offline_users as u64);
                if let Err(e) = outcome.bus {
                    // Delivered here only; the sender learns so rather than assuming.
                    self.stats.count_dropped("bus", to.len() as u64);
                    self.reply(conn, "unavailable", e.as_str());
                }
            }
            ClientRequest::Join { room } => {
                if info.rooms.iter().any(|r| **r == *room) {
                    return;
                }
                if info.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    self.stats.count_dropped("room_limit", 1);
                    return;
                }
                let room = self.router.join(&room, conn);
                info.rooms.push(room);
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

    fn on_close(&mut self, conn: ConnRef) {
        if let Some(info) = self.conns.remove(&conn) {
            for room in &info.rooms {
                self.router.leave(room, conn);
            }
            self.router.remove_user(&info.uid, conn);
        }
    }
}

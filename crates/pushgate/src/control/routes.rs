//! What each control path answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use reactor::admission::Admission;
use reactor::{Parking, ReactorHandle};
use router::bus::stats::Counter;
use router::{BusError, Router};

use super::api;
use super::batch::{self, BatchLimits};
use super::http::{error_body, json_error, response, Request};
use super::operator::{self, OperatorLimits, OperatorStats};
use crate::metrics::Metrics;

/// `GET /v1/rooms/presence` (served by [`operator::room_presence_then`]).
const ROOM_PRESENCE_PATH: &str = "/v1/rooms/presence";

/// `POST /v1/batch` (served by [`batch`]).
pub(super) const BATCH_PATH: &str = "/v1/batch";

/// Server API endpoints, for the request counters.
pub const API_ENDPOINTS: [&str; 3] = ["push", "broadcast", "batch"];
/// Statuses the API answers with, for the request counters.
pub const API_STATUSES: [u16; 8] = [200, 400, 401, 404, 405, 413, 503, 504];

/// How long a push parked for JetStream's answers may wait before the reactor answers
/// 504 itself: past the bus's own store timeout, which normally answers first (503).
pub(super) const PUSH_PARK: Duration = router::STORE_WAIT.saturating_add(Duration::from_secs(1));
/// How long a presence query may be parked past its `presence_timeout` (the bus thread
/// answers at the timeout; this only bounds a bus thread that stopped).
const PRESENCE_PARK_SLACK: Duration = Duration::from_secs(1);

/// A gathering of answers from this node's reactors and the other nodes.
type GatherFn = fn(
    &Arc<Router>,
    &str,
    &OperatorLimits,
    &Arc<operator::OperatorStats>,
    &str,
    Box<dyn FnOnce(operator::Answer) + Send>,
);

/// Counters of the server API.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Requests by endpoint (index into [`API_ENDPOINTS`]) and status (into [`API_STATUSES`]).
    pub requests: [[Counter; 8]; 3],
    /// Users named in pushes with no connection on this node.
    pub offline: Counter,
    /// Pushes carried in `/v1/batch` requests, by their own status (into
    /// [`API_STATUSES`]).
    pub batch_items: [Counter; 8],
    /// `/v1/batch` requests refused whole, by the limit they broke (into
    /// [`batch::BATCH_LIMITS`]).
    pub batch_refused: [Counter; 2],
    /// `/v1/history` reads by [`super::history_api::HISTORY_READ_RESULTS`].
    pub history_reads: [Counter; 4],
}

impl ApiStats {
    pub(super) fn count(&self, endpoint: usize, status: u16) {
        if let Some(i) = API_STATUSES.iter().position(|&s| s == status) {
            self.requests[endpoint][i].add(1);
        }
    }
}

/// What the routes read.
#[derive(Debug)]
pub struct ControlState {
    /// The reactors, for their counters.
    pub reactors: Vec<ReactorHandle>,
    /// Connection caps and the drain flag.
    pub admission: Arc<Admission>,
    /// The router, for pushes and registry gauges.
    pub router: Arc<Router>,
    /// This node's name.
    pub node_id: String,
    /// Bearer key the API requires, if any.
    pub api_key: Option<String>,
    /// API body limit.
    pub max_body_bytes: usize,
    /// API counters.
    pub api_stats: Arc<ApiStats>,
    /// `/metrics`.
    pub metrics: Metrics,
    /// Bounds of `/v1/presence` and `/v1/disconnect`.
    pub operator_limits: OperatorLimits,
    /// Counters of `/v1/presence` and `/v1/disconnect`.
    pub operator_stats: Arc<OperatorStats>,
    /// Bounds of `/v1/batch`.
    pub batch_limits: BatchLimits,
    /// Most messages one `/v1/history` read returns.
    pub history_max_limit: usize,
}

/// Compares in constant time (the `subtle` crate, which also keeps the optimiser from
/// turning the comparison back into an early exit), so response time says nothing about
/// the key. Only the key's length can be learnt, as from any comparison.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

impl ControlState {
    /// The response to one request, or `None` when it was parked (a push waiting for
    /// JetStream, a presence query waiting for the other nodes): its completion answers.
    pub fn handle(
        &self,
        req: &Request,
        reactors_running: bool,
        parking: &mut Parking<'_>,
    ) -> Option<Vec<u8>> {
        let keep = req.keep_alive;
        if req.path == BATCH_PATH {
            return batch::serve(self, req, parking);
        }
        if req.path == "/v1/history" {
            return super::history_api::serve(self, req, parking);
        }
        let endpoint = match req.path.as_str() {
            "/v1/push" => Some(0),
            "/v1/broadcast" => Some(1),
            _ => None,
        };
        if let Some(e) = endpoint {
            if e == 0 && req.method == "POST" && self.router.push_is_deferred() {
                return self.push_later(req, parking);
            }
            let (status, body) = self.api(e, req);
            self.api_stats.count(e, status);
            return Some(match body {
                Ok(body) => response(200, "application/json", &body, keep),
                Err(msg) => json_error(status, msg, keep),
            });
        }
        if req.path == "/v1/presence" && req.method == "GET" && self.authorized(req) {
            return self.gather_later(req, parking, operator::presence_then);
        }
        if req.path == ROOM_PRESENCE_PATH {
            return match (req.method.as_str(), self.authorized(req)) {
                ("GET", true) => self.gather_later(req, parking, operator::room_presence_then),
                ("GET", false) => Some(json_error(401, "missing or wrong API key", keep)),
                _ => Some(json_error(405, "method not allowed", keep)),
            };
        }
        let room_op = match req.path.as_str() {
            "/v1/rooms/join" => Some(router::rooms::RoomOp::Join),
            "/v1/rooms/leave" => Some(router::rooms::RoomOp::Leave),
            _ => None,
        };
        if let Some(op) = room_op {
            return match (req.method.as_str(), self.authorized(req)) {
                ("POST", true) => super::rooms::change(&self.router, op, &req.body, keep, parking),
                ("POST", false) => Some(json_error(401, "missing or wrong API key", keep)),
                _ => Some(json_error(405, "method not allowed", keep)),
            };
        }
        if matches!(req.path.as_str(), "/v1/presence" | "/v1/disconnect") {
            let (status, body) = self.operator(req);
            return Some(match body {
                Ok(body) => response(status, "application/json", &body, keep),
                Err(msg) => json_error(status, msg, keep),
            });
        }
        Some(self.handle_now(req, reactors_running))
    }

    /// A push on a clustered node with history: answered once JetStream stored it for
    /// every recipient (or refused, or the bus gave up on it), the reactor serving other
    /// requests and connections meanwhile.
    fn push_later(&self, req: &Request, parking: &mut Parking<'_>) -> Option<Vec<u8>> {
        let keep = req.keep_alive;
        if !self.authorized(req) {
            self.api_stats.count(0, 401);
            return Some(json_error(401, "missing or wrong API key", keep));
        }
        let p = match api::parse_push(&req.body) {
            Ok(p) => p,
            Err(e) => {
                self.api_stats.count(0, 400);
                return Some(json_error(400, e, keep));
            }
        };
        let Some(completion) = parking.park(PUSH_PARK, keep) else {
            self.api_stats.count(0, 503);
            return Some(json_error(
                503,
                "cannot wait for the history store here",
                keep,
            ));
        };
        let stats = Arc::clone(&self.api_stats);
        let received = Instant::now();
        api::push_then(
            &self.router,
            &p,
            received,
            Box::new(move |d| {
                let (status, body) = deferred_answer(&stats, &d);
                stats.count(0, status);
                completion.complete(response(status, "application/json", &body, keep));
            }),
        );
        None
    }

    /// `/v1/presence` (`ask` = [`operator::presence_then`]) or `/v1/rooms/presence`
    /// ([`operator::room_presence_then`]), answered once this node's reactors and the other
    /// nodes did (or the other nodes' time ran out).
    fn gather_later(
        &self,
        req: &Request,
        parking: &mut Parking<'_>,
        ask: GatherFn,
    ) -> Option<Vec<u8>> {
        let keep = req.keep_alive;
        let limits = self.operator_limits;
        let Some(completion) = parking.park(limits.presence_timeout + PRESENCE_PARK_SLACK, keep)
        else {
            return Some(json_error(
                503,
                "cannot wait for the other nodes here",
                keep,
            ));
        };
        ask(
            &self.router,
            &self.node_id,
            &limits,
            &self.operator_stats,
            req.head.query().unwrap_or(""),
            Box::new(move |(status, body)| {
                completion.complete(match body {
                    Ok(body) => response(status, "application/json", &body, keep),
                    Err(msg) => json_error(status, msg, keep),
                })
            }),
        );
        None
    }

    /// The requests answered at once: health, readiness, metrics, and what is not found.
    fn handle_now(&self, req: &Request, reactors_running: bool) -> Vec<u8> {
        let keep = req.keep_alive;
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => response(200, "application/json", b"{\"ok\":true}", keep),
            ("GET", "/readyz") => {
                if !reactors_running || self.admission.is_draining() {
                    json_error(503, "not accepting connections", keep)
                } else if !self.router.bus().is_ready() {
                    json_error(503, "cluster bus disconnected", keep)
                } else {
                    response(200, "application/json", b"{\"ok\":true}", keep)
                }
            }
            ("GET", "/metrics") => {
                let body = self.metrics.render();
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    keep,
                )
            }
            (_, "/healthz" | "/readyz" | "/metrics") => json_error(405, "method not allowed", keep),
            _ => json_error(404, "not found", keep),
        }
    }

    /// Whether the request carries the API key, when one is required.
    pub(super) fn authorized(&self, req: &Request) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let given = req.authorization.as_deref().and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes()))
    }

    /// Serves `/v1/presence` and `/v1/disconnect`, behind the API key like the API.
    fn operator(&self, req: &Request) -> operator::Answer {
        let presence = req.path == "/v1/presence";
        let method_ok = if presence {
            req.method == "GET"
        } else {
            req.method == "POST"
        };
        if !method_ok {
            return (405, Err("method not allowed"));
        }
        if !self.authorized(req) {
            return (401, Err("missing or wrong API key"));
        }
        if presence {
            // Served by `gather_later`, which parks; here only when it cannot.
            (503, Err("cannot wait for the other nodes here"))
        } else {
            operator::disconnect(&self.router, &self.operator_stats, &req.body)
        }
    }

    /// A `/v1/batch` request the reader refused before it was complete.
    pub(super) fn count_batch_refusal(&self, e: super::http::ParseError) {
        if e == super::http::ParseError::BodyTooLarge {
            self.api_stats.batch_refused[1].add(1);
        }
        self.api_stats.count(2, e.status().0);
    }

    /// Carries out a push where nothing waits (see [`Router::push_is_deferred`]).
    pub(super) fn push_now(
        &self,
        p: &api::PushRequest<'_>,
        received: Instant,
    ) -> (u16, Result<Bytes, &'static str>) {
        // A retry with the caller's ID gets the first answer; a refused push is not
        // remembered, so its retry is carried out.
        let answer = self.router.once(p.id.as_deref(), || {
            let d = api::push(&self.router, p, received);
            self.api_stats.offline.add(d.outcome.offline_users as u64);
            match saturation_status(d.outcome.refused).unwrap_or_else(|| bus_status(d.outcome.bus))
            {
                (200, _) => Ok(Bytes::from(api::push_answer(&d))),
                (status, Err(e)) => Err((status, e)),
                (status, Ok(())) => Err((status, "refused")),
            }
        });
        match answer {
            Ok((body, _)) => (200, Ok(body)),
            Err((status, e)) => (status, Err(e)),
        }
    }

    /// Serves an API endpoint: (status, Ok or the error message).
    fn api(&self, endpoint: usize, req: &Request) -> (u16, Result<Bytes, &'static str>) {
        if req.method != "POST" {
            return (405, Err("method not allowed"));
        }
        if !self.authorized(req) {
            return (401, Err("missing or wrong API key"));
        }
        let received = Instant::now();
        if endpoint == 0 {
            match api::parse_push(&req.body) {
                Ok(p) => self.push_now(&p, received),
                Err(e) => (400, Err(e)),
            }
        } else {
            match api::parse_broadcast(&req.body) {
                Ok((from, data)) => {
                    match self
                        .router
                        .broadcast(Router::msg_frame(&from, data.get().as_bytes()), received)
                    {
                        Ok(refused) => match saturation_status(refused) {
                            Some((status, Err(e))) => (status, Err(e)),
                            _ => (200, Ok(Bytes::from_static(b"{\"ok\":true}"))),
                        },
                        Err(e) => match bus_status(Err(e)) {
                            (status, Err(e)) => (status, Err(e)),
                            (status, Ok(())) => (status, Ok(Bytes::from_static(b"{\"ok\":true}"))),
                        },
                    }
                }
                Err(e) => (400, Err(e)),
            }
        }
    }
}

/// The status and JSON body of a push carried out by [`api::push_then`] (counted in
/// `stats`' offline users).
pub(super) fn deferred_answer(stats: &ApiStats, d: &router::Delivered) -> (u16, Vec<u8>) {
    stats.offline.add(d.outcome.offline_users as u64);
    if let (Err(BusError::Disconnected), Some(id)) = (d.outcome.bus, &d.id) {
        return (503, api::unstored_answer(id, d));
    }
    match saturation_status(d.outcome.refused).unwrap_or_else(|| bus_status(d.outcome.bus)) {
        (200, _) => (200, api::push_answer(d)),
        (status, Err(e)) => (status, error_body(e)),
        (status, Ok(())) => (status, error_body("refused")),
    }
}

/// Recipients on a reactor whose inbox was full did not get the push: 503, so the caller
/// backs off and retries instead of the node queueing without bound.
fn saturation_status(refused: usize) -> Option<(u16, Result<(), &'static str>)> {
    (refused > 0).then_some((
        503,
        Err("node saturated: some local recipients were not reached; retry later"),
    ))
}

/// A push the bus could not take went to this node's recipients only: 503, so the
/// caller knows the rest of the cluster missed it.
fn bus_status(sent: Result<(), BusError>) -> (u16, Result<(), &'static str>) {
    match sent {
        Ok(()) => (200, Ok(())),
        Err(BusError::Disconnected) => (
            503,
            Err("cluster bus disconnected: delivered to this node's connections only"),
        ),
        Err(BusError::QueueFull) => (
            503,
            Err("cluster bus queue full: delivered to this node's connections only"),
        ),
        Err(BusError::TooLarge) => (
            413,
            Err("message too large for the cluster bus: delivered to this node's connections only"),
        ),
        Err(BusError::History) => (
            503,
            Err("history store not confirmed: retry with the same \"id\" (delivered at most once)"),
        ),
    }
}

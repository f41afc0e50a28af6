//! The control routes served on the reactors: HTTP/1.1 requests parsed out of a
//! connection's input and answered in order (keep-alive and pipelining included).

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use reactor::{ConnState, Flow, Parking, Service, Unanswered};

use super::http::{json_error, BodyLimit, Next, Reader, CONTINUE, MAX_CHUNKS};
use super::routes::ControlState;

/// One reactor's handle on the control routes. The state is set once the reactors are
/// bound (it holds their handles for `/metrics`), before any of them runs.
#[derive(Debug, Clone)]
pub struct ControlService {
    state: Arc<OnceLock<Arc<ControlState>>>,
}

impl ControlService {
    /// A service answering from `state` once it is set.
    pub fn new(state: Arc<OnceLock<Arc<ControlState>>>) -> Self {
        ControlService { state }
    }
}

impl Service for ControlService {
    fn serve(
        &mut self,
        conn: &mut ConnState,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        room: usize,
        eof: bool,
        parking: &mut Parking<'_>,
    ) -> Flow {
        let Some(state) = self.state.get() else {
            out.extend_from_slice(&json_error(503, "starting", false));
            return Flow::Close;
        };
        // The connection's request reader, made on its first read.
        if !conn.as_ref().is_some_and(|c| c.is::<Reader>()) {
            *conn = Some(Box::new(Reader::default()));
        }
        let Some(reader) = conn.as_mut().and_then(|c| c.downcast_mut::<Reader>()) else {
            return Flow::Close;
        };
        let start = out.len();
        let batch = state.batch_limits;
        // A batch may be larger than a push, and a streaming client may send a chunk per
        // line.
        let limit = |path: &str| {
            if path == super::batch::PATH {
                BodyLimit {
                    bytes: batch.max_bytes,
                    chunks: MAX_CHUNKS.max(batch.max_items),
                }
            } else {
                BodyLimit::bytes(state.max_body_bytes)
            }
        };
        loop {
            if out.len() - start >= room {
                return Flow::Paused;
            }
            match reader.next_request_limited(input, limit) {
                Ok(Next::Request(req)) => {
                    match state.handle(&req, true, parking) {
                        Some(answer) => out.extend_from_slice(&answer),
                        // Answered later; the requests behind it wait their turn.
                        None => return Flow::KeepAlive,
                    }
                    if !req.keep_alive {
                        return Flow::Close;
                    }
                }
                Ok(Next::Incomplete | Next::Continue) if eof && !input.is_empty() => {
                    out.extend_from_slice(&json_error(400, "incomplete request", false));
                    return Flow::Close;
                }
                Ok(Next::Continue) => {
                    out.extend_from_slice(CONTINUE);
                    return Flow::KeepAlive;
                }
                Ok(Next::Incomplete) => return Flow::KeepAlive,
                Err(e) => {
                    let (status, msg) = e.status();
                    if reader.last_path() == super::batch::PATH {
                        state.count_batch_refusal(e);
                    }
                    out.extend_from_slice(&json_error(status, msg, false));
                    input.clear();
                    return Flow::Close;
                }
            }
        }
    }

    fn unanswered(&mut self, why: Unanswered, keep_alive: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&match why {
            Unanswered::TimedOut => json_error(504, TIMED_OUT, keep_alive),
            Unanswered::Dropped => json_error(503, DROPPED, keep_alive),
        });
    }
}

/// The 504 of a request parked past its deadline (the bus gives up on JetStream and on
/// the other nodes before it, so this is a safety net, not the usual answer).
const TIMED_OUT: &str =
    "no answer in time from the cluster; the request may still take effect: retry with the same \"id\"";
/// The 503 of a request whose answer was given up (the bus thread stopped).
const DROPPED: &str = "the node gave up on this request (shutting down?); retry";

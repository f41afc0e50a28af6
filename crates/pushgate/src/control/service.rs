//! The control routes served on the reactors: HTTP/1.1 requests parsed out of a
//! connection's input and answered in order (keep-alive and pipelining included).

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use reactor::{ConnState, Flow, Service};

use super::http::{json_error, Next, Reader, CONTINUE};
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
        loop {
            if out.len() - start >= room {
                return Flow::Paused;
            }
            match reader.next_request(input, state.max_body_bytes) {
                Ok(Next::Request(req)) => {
                    out.extend_from_slice(&state.handle(&req, true));
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
                    out.extend_from_slice(&json_error(status, msg, false));
                    input.clear();
                    return Flow::Close;
                }
            }
        }
    }
}

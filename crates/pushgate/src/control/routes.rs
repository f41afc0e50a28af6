//! What each control path answers.

use std::sync::Arc;

use reactor::admission::Admission;
use reactor::ReactorHandle;

use super::http::{json_error, response, Request};
use crate::metrics;

/// What the routes read.
#[derive(Debug)]
pub struct ControlState {
    /// The reactors, for their counters.
    pub reactors: Vec<ReactorHandle>,
    /// Connection caps and the drain flag.
    pub admission: Arc<Admission>,
    /// This node's name.
    pub node_id: String,
}

impl ControlState {
    /// The response to one request.
    pub fn handle(&self, req: &Request, reactors_running: bool) -> Vec<u8> {
        let keep = req.keep_alive;
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => response(200, "application/json", b"{\"ok\":true}", keep),
            ("GET", "/readyz") => {
                if reactors_running && !self.admission.is_draining() {
                    response(200, "application/json", b"{\"ok\":true}", keep)
                } else {
                    json_error(503, "not accepting connections", keep)
                }
            }
            ("GET", "/metrics") => {
                let body = metrics::render(&self.reactors, &self.admission, &self.node_id);
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
}

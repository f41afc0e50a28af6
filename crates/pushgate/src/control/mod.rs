//! The control listener: the server API, health, readiness and metrics. The reactors
//! serve it (see `reactor::service`), so a push is routed on the thread that read it and
//! the API scales with the cores; this module holds what the requests mean.

pub mod api;
mod batch;
mod history_api;
pub mod http;
pub mod operator;
pub mod rooms;
mod routes;
mod service;

pub use batch::{BatchLimits, BATCH_LIMITS};
pub use history_api::HISTORY_READ_RESULTS;
pub use operator::{OperatorLimits, OperatorStats};
pub use routes::{ApiStats, ControlState, API_ENDPOINTS, API_STATUSES};
pub use service::ControlService;

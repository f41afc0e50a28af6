//! The HTTP/1.1 upgrade (RFC 6455 §4): an incremental request parser, the validation of an
//! upgrade request, and the response writers.

mod request;
mod response;
mod validate;

pub use request::{head_end, Request, RequestParser, DEFAULT_MAX_HEADER_BYTES, MAX_HEADERS};
pub use response::{accept_key, error_response, switching_protocols, Status};
pub use validate::{validate, Upgrade};

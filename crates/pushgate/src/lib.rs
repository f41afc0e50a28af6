//! The pushgate binary's parts, as a library so they are testable: configuration, the
//! control listener, metrics, process limits.

pub mod config;
pub mod control;
pub mod limits;
pub mod metrics;
pub mod token;
pub mod webhook;

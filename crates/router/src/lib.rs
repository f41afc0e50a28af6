//! Recipient-ID routing, rooms and the cluster bus.
//!
//! Filled in by issues 4 and 5; the crate exists so the workspace layout is final from
//! the first commit.

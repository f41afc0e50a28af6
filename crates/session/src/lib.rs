//! Connection state machine, auth, heartbeats and the client protocol.
//!
//! Filled in by issue 4 ("IM routing"); the crate exists so the workspace layout is
//! final from the first commit.

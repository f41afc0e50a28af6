//! mio event loops, one per core, and their timer wheels.
//!
//! Filled in by issue 3 ("Multi-reactor core"); the crate exists so the workspace layout
//! is final from the first commit.

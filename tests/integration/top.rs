//! top

//! rustbk grant crate.

//! rustbk thin crate.

//! rustbk ring crate.

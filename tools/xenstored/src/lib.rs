//! rustbk xenstored crate.

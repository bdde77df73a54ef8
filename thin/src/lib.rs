//! rustbk thin crate.

pub mod xml;

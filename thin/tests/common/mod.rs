//! Support shared by the integration tests of rustbk-thin.

pub mod peers;

//! Support shared by the integration tests of rustbk-thin.

pub mod damage;
pub mod peers;

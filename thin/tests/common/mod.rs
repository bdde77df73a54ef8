//! Support shared by the integration tests of rustbk-thin.

pub mod damage;
#[path = "../../src/peers.rs"]
pub mod peers;

//! Test-only fault injection: proof that a worker that dies is reported, not left Connected.
//!
//! Only debug builds (the ones the test suite runs) look at `RUSTBK_TEST_PANIC_AT_SECTOR`; a
//! request starting at that sector then panics the ring worker. Release builds never read the
//! variable, so it cannot be used against a production backend.

use rustbk_ring::Request;

/// The environment variable debug builds read.
pub const PANIC_AT_SECTOR_ENV: &str = "RUSTBK_TEST_PANIC_AT_SECTOR";

/// The faults to inject into one worker (none in release builds).
#[derive(Debug, Default)]
pub(super) struct Faults {
    panic_at_sector: Option<u64>,
}

impl Faults {
    /// Reads the test's wishes (debug builds only).
    pub fn from_env() -> Faults {
        if !cfg!(debug_assertions) {
            return Faults::default();
        }
        let panic_at_sector = std::env::var(PANIC_AT_SECTOR_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok());
        if panic_at_sector.is_some() {
            tracing::warn!(?panic_at_sector, "test fault injection is armed");
        }
        Faults { panic_at_sector }
    }

    /// Panics if `req` is the request the test asked to fail on.
    pub fn check(&self, req: &Request) {
        let sector = match req {
            Request::Rw { sector, .. }
            | Request::Indirect { sector, .. }
            | Request::Discard { sector, .. } => sector.0,
        };
        if self.panic_at_sector == Some(sector) {
            panic!("injected test fault: request at sector {sector}");
        }
    }
}

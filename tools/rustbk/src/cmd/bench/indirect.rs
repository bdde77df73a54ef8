//! `rustbk bench --indirect`: 1 MiB sequential reads and writes with indirect requests (256
//! segments, the whole block in one request) against without (the emulated guest sends each
//! block as 24 requests of at most 11 segments, 44 KiB, as Linux blkfront does when the
//! backend offers no indirect requests). The guest's ring has 32 slots either way.

use super::compare::{Case, Comparison, variant};
use crate::cli::BackendArgs;

/// Blocks in flight: 8 MiB with indirect requests; without them the 32-slot ring holds one
/// block's 24 requests at a time.
const QD: u32 = 8;

/// With and without indirect requests, each from the common backend flags.
pub(super) fn comparison(base: &BackendArgs) -> Comparison {
    let variants = vec![
        variant("indirect (256 segments)", base, |b| {
            b.max_indirect_segments = 256;
        }),
        variant("no indirect (44 KiB)", base, |b| {
            b.max_indirect_segments = 0
        }),
    ];
    let cases = ["read", "write"].map(|rw| Case {
        rw,
        qd: QD,
        bs: 1 << 20,
    });
    Comparison {
        title: "--indirect",
        variants,
        cases: cases.to_vec(),
    }
}

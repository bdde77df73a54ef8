//! How many persistent grants a ring keeps mapped when the toolstack does not say.

/// Pages a ring may keep mapped: enough for a full ring of the largest requests offered
/// (their data pages and indirect pages), at least Linux blkback's 1056 and at most 8192
/// (32 MiB). Linux's 1056 is a 32-slot ring of its frontend's default 32-segment requests;
/// a guest using the 256 segments rustbk offers would thrash a cache that small (1 MiB
/// writes at depth 8 ran at two thirds of the speed with 1056).
pub(super) fn persistent_budget(ring_size: u32, max_indirect_segments: u32) -> usize {
    let segments = (max_indirect_segments as usize).max(rustbk_ring::MAX_SEGMENTS_PER_REQUEST);
    let indirect_pages = match max_indirect_segments {
        0 => 0,
        n => (n as usize).div_ceil(rustbk_ring::SEGS_PER_INDIRECT_FRAME),
    };
    (ring_size as usize)
        .saturating_mul(segments + indirect_pages)
        .clamp(1056, 8192)
}

#[cfg(test)]
mod tests {
    use super::persistent_budget;

    #[test]
    fn a_ring_keeps_enough_grants_for_its_largest_requests_within_1056_and_8192() {
        // Linux's frontend defaults: 32 slots of 32 segments and one indirect page.
        assert_eq!(persistent_budget(32, 32), 1056);
        assert_eq!(persistent_budget(32, 0), 1056);
        assert_eq!(persistent_budget(128, 0), 128 * 11);
        assert_eq!(persistent_budget(16, 256), 16 * 257);
        assert_eq!(persistent_budget(32, 256), 8192);
        assert_eq!(persistent_budget(512, 4096), 8192);
    }
}

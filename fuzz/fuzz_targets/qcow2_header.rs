//! Fuzzes the qcow2 header parser: the first cluster of a hostile image file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustbk_formats::qcow2::header::{self, CLUSTER_BITS, Header, MAX_L1_BYTES, MAX_SIZE};

/// Checks the promises a parsed header makes to the rest of the driver.
fn check(h: &Header, file_size: u64) {
    assert!(h.version == 2 || h.version == 3);
    assert!(CLUSTER_BITS.contains(&h.cluster_bits));
    assert!(h.size <= MAX_SIZE);
    assert!(u64::from(h.l1_size) * 8 <= MAX_L1_BYTES);
    assert!(u64::from(h.l1_size) >= h.l1_entries_needed());
    assert!(h.refcount_table_clusters > 0);
    let cs = h.cluster_size();
    // The tables the driver will read lie cluster-aligned inside the file, after the header.
    let tables = [
        (
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        ),
        (h.l1_table_offset, u64::from(h.l1_size) * 8),
    ];
    for (offset, len) in tables.into_iter().filter(|t| t.1 > 0) {
        assert!(offset >= cs && offset % cs == 0, "table at {offset:#x}");
        assert!(offset.checked_add(len).is_some_and(|end| end <= file_size));
    }
    let _ = h.describe_incompatible(h.incompatible);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bits) = header::peek_cluster_bits(data) {
        assert!(CLUSTER_BITS.contains(&bits));
    }
    // The file size as the driver sees it: the input itself, or one the input names.
    let named = data
        .get(data.len().saturating_sub(8)..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    for file_size in [data.len() as u64, named] {
        if let Ok(h) = Header::parse(data, file_size) {
            check(&h, file_size);
        }
    }
});

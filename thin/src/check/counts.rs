//! The recount against the stored counts: a difference is a leak when nothing references the
//! block, and a wrong count otherwise.

use super::sm::{METADATA, Which};
use super::{Area, Checker};

/// The references to blocks `first..first + len` among the sorted `refs`.
pub(super) fn recount(refs: &[u64], first: u64, len: usize) -> Vec<u32> {
    let mut counts = vec![0u32; len];
    let start = refs.partition_point(|&b| b < first);
    for &block in &refs[start..] {
        let Some(slot) = block
            .checked_sub(first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| counts.get_mut(i))
        else {
            break;
        };
        *slot = slot.saturating_add(1);
    }
    counts
}

/// The number of different values in the sorted `refs`.
pub(super) fn count_distinct(refs: &[u64]) -> u64 {
    let repeats = refs.windows(2).filter(|w| w[0] == w[1]).count();
    (refs.len() - repeats) as u64
}

impl Checker {
    /// Compares the stored counts of blocks `first..` with their recount.
    pub(super) fn compare_counts(
        &mut self,
        which: Which,
        first: u64,
        stored: &[u32],
        found: &[u32],
    ) {
        for (block, (&s, &r)) in (first..).zip(stored.iter().zip(found)) {
            if s != r {
                self.count_problem(which, block, s, r);
            }
        }
    }

    fn count_problem(&mut self, which: Which, block: u64, stored: u32, found: u32) {
        let message = match found {
            0 => {
                match which.leak {
                    Area::DataLeak => self.report.totals.data_blocks_leaked += 1,
                    _ => self.report.totals.metadata_blocks_leaked += 1,
                }
                format!(
                    "{} block {block} has a count of {stored} but nothing references it",
                    which.name
                )
            }
            _ => format!(
                "{} block {block} has a count of {stored} but is referenced {found} times",
                which.name
            ),
        };
        let area = if found == 0 { which.leak } else { which.count };
        let meta = (which.leak == Area::MetadataLeak).then_some(block);
        self.problem(area, meta, None, message);
    }

    /// Compares the metadata space map's `stored` counts with the references found.
    pub(super) fn compare_metadata_counts(&mut self, stored: &[u32]) {
        let refs = std::mem::take(&mut self.refs);
        let len = refs.len().max(stored.len());
        for i in 0..len {
            let s = stored.get(i).copied().unwrap_or(0);
            let r = refs.get(i).copied().unwrap_or(0);
            if s != r {
                self.count_problem(METADATA, i as u64, s, r);
            }
        }
        self.refs = refs;
    }
}

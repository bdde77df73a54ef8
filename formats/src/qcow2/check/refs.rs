//! The references counted per host cluster during a pass.

use crate::error::Error;

use super::{CheckReport, MAX_CHECK_CLUSTERS};

/// Reference counts of every cluster of the image file (4 bytes each).
pub(super) struct Refs {
    counts: Vec<u32>,
    cluster_bits: u32,
    file_size: u64,
}

impl Refs {
    /// Counts for a file of `file_size` bytes; refuses files over [`MAX_CHECK_CLUSTERS`].
    pub fn new(file_size: u64, cluster_bits: u32) -> Result<Refs, Error> {
        let clusters = file_size.div_ceil(1 << cluster_bits);
        if clusters > MAX_CHECK_CLUSTERS {
            return Err(Error::UnsupportedFeature(format!(
                "checking an image file of {clusters} clusters (at most {MAX_CHECK_CLUSTERS})"
            )));
        }
        let len = usize::try_from(clusters)
            .map_err(|_| Error::InvalidArgument(format!("{clusters} clusters")))?;
        Ok(Refs {
            counts: vec![0; len],
            cluster_bits,
            file_size,
        })
    }

    /// Clusters of the file.
    pub fn len(&self) -> u64 {
        self.counts.len() as u64
    }

    /// References counted for `cluster`.
    pub fn get(&self, cluster: u64) -> u64 {
        usize::try_from(cluster)
            .ok()
            .and_then(|i| self.counts.get(i))
            .map_or(0, |&c| u64::from(c))
    }

    /// Removes the references of `[offset, offset + len)` again (counts never drop below 0).
    pub fn dec(&mut self, offset: u64, len: u64) {
        for cluster in self.span(offset, len) {
            if let Some(c) = usize::try_from(cluster)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
            {
                *c = c.saturating_sub(1);
            }
        }
    }

    fn span(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let first = offset >> self.cluster_bits;
        let last = offset.saturating_add(len - 1) >> self.cluster_bits;
        first..last.saturating_add(1)
    }

    /// Counts one reference to every cluster of `[offset, offset + len)`. A range reaching a
    /// cluster or more past the end of the file is a corruption and is not counted (the last,
    /// partly written cluster of a file may be referenced whole).
    pub fn inc(&mut self, report: &mut CheckReport, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let cs = 1u64 << self.cluster_bits;
        let past = offset
            .checked_add(len)
            .map(|end| end.saturating_sub(self.file_size));
        if past.is_none_or(|p| p >= cs) {
            report.corruptions += 1;
            report.note(format!(
                "ERROR: counting reference for region exceeding the end of the file by one \
                 cluster or more: offset {offset:#x} size {len:#x}"
            ));
            return;
        }
        for cluster in self.span(offset, len) {
            let Some(c) = usize::try_from(cluster)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
            else {
                continue;
            };
            match c.checked_add(1) {
                Some(n) => *c = n,
                None => {
                    report.corruptions += 1;
                    report.note(format!(
                        "ERROR: overflow cluster offset={:#x}",
                        cluster << self.cluster_bits
                    ));
                }
            }
        }
    }
}

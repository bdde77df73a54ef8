//! Allocation of guest page frames.

use crate::Error;

/// A first-fit allocator of contiguous frame runs in guest RAM.
#[derive(Debug)]
pub struct FrameAlloc {
    used: Vec<bool>,
}

impl FrameAlloc {
    /// An allocator over `pages` frames, all free.
    pub fn new(pages: u32) -> Self {
        FrameAlloc {
            used: vec![false; pages as usize],
        }
    }

    /// Allocates `count` contiguous frames; returns the first.
    pub fn alloc(&mut self, count: u32) -> Result<u32, Error> {
        let count = count as usize;
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == count {
                let first = i + 1 - count;
                self.used[first..=i].fill(true);
                return u32::try_from(first).map_err(|_| Error::OutOfFrames);
            }
        }
        Err(Error::OutOfFrames)
    }

    /// Frees `count` frames from `first`.
    pub fn free(&mut self, first: u32, count: u32) {
        let (a, b) = (first as usize, first as usize + count as usize);
        if let Some(s) = self.used.get_mut(a..b) {
            s.fill(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_contiguous_runs_and_reuses_freed_frames() {
        let mut f = FrameAlloc::new(8);
        assert_eq!(f.alloc(3).unwrap(), 0);
        assert_eq!(f.alloc(2).unwrap(), 3);
        f.free(0, 3);
        assert_eq!(
            f.alloc(4).unwrap_err().to_string(),
            Error::OutOfFrames.to_string()
        );
        assert_eq!(f.alloc(3).unwrap(), 0);
        assert_eq!(f.alloc(3).unwrap(), 5);
    }
}

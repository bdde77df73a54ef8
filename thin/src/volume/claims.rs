//! Which virtual blocks the ops in flight use: reads and in-place overwrites share a block;
//! allocation, copy-on-write and zeroing own it. An op that would conflict waits.

use foldhash::{HashMap, HashSet};
use std::ops::Range;

/// The claims of one volume's ops in flight.
#[derive(Default)]
pub struct Claims {
    shared: HashMap<u64, u32>,
    owned: HashSet<u64>,
}

impl Claims {
    /// Whether no op is in flight.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.owned.is_empty()
    }

    /// Whether no block of `range` is owned.
    pub fn can_share(&self, range: &Range<u64>) -> bool {
        !any_in(
            range,
            self.owned.len(),
            |v| self.owned.contains(&v),
            || self.owned.iter().copied(),
        )
    }

    /// Whether no block of `range` is shared or owned.
    pub fn can_own(&self, range: &Range<u64>) -> bool {
        self.can_share(range)
            && !any_in(
                range,
                self.shared.len(),
                |v| self.shared.contains_key(&v),
                || self.shared.keys().copied(),
            )
    }

    /// Shares every block of `range`.
    pub fn share(&mut self, range: Range<u64>) {
        for v in range {
            *self.shared.entry(v).or_insert(0) += 1;
        }
    }

    /// Ends a [`Claims::share`].
    pub fn unshare(&mut self, range: Range<u64>) {
        for v in range {
            if let Some(n) = self.shared.get_mut(&v) {
                *n -= 1;
                if *n == 0 {
                    self.shared.remove(&v);
                }
            }
        }
    }

    /// Owns `vblocks`.
    pub fn own(&mut self, vblocks: &[u64]) {
        self.owned.extend(vblocks.iter().copied());
    }

    /// Ends an [`Claims::own`].
    pub fn disown(&mut self, vblocks: &[u64]) {
        for v in vblocks {
            self.owned.remove(v);
        }
    }
}

/// Whether any block of `range` passes `contains`, walking whichever is smaller: the range or
/// the set of `set_len` blocks from `set`.
fn any_in<I: Iterator<Item = u64>>(
    range: &Range<u64>,
    set_len: usize,
    contains: impl Fn(u64) -> bool,
    set: impl FnOnce() -> I,
) -> bool {
    if set_len == 0 {
        return false;
    }
    if range.end.saturating_sub(range.start) <= set_len as u64 {
        return range.clone().any(contains);
    }
    set().any(|v| range.contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_blocks_block_sharing_and_shared_blocks_block_owning() {
        let mut claims = Claims::default();
        claims.share(4..6);
        assert!(claims.can_share(&(0..100)));
        assert!(!claims.can_own(&(5..6)));
        assert!(claims.can_own(&(6..1000)));
        claims.own(&[10]);
        assert!(!claims.can_share(&(0..1 << 40)));
        claims.unshare(4..6);
        claims.disown(&[10]);
        assert!(claims.can_own(&(0..u64::MAX)));
    }
}

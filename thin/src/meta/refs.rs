//! What the mapping trees' values reference: data blocks (in the block trees) and block
//! trees (in the top-level tree).

use super::details::{MAPPING_SIZE, Mapping};
use crate::error::Result;
use crate::pdata::btree::{self, ValueRefs};
use crate::pdata::refs::RefCounts;
use crate::pdata::tm::Tm;

/// Block tree values: each holds one reference to its data block.
pub struct DataRefs<'a>(pub &'a mut RefCounts);

impl ValueRefs for DataRefs<'_> {
    fn inc(&mut self, _: &mut Tm, value: &[u8]) -> Result<()> {
        self.0.inc(Mapping::decode(value).block).map(drop)
    }

    fn dec(&mut self, _: &mut Tm, value: &[u8]) -> Result<()> {
        self.0.dec(Mapping::decode(value).block).map(drop)
    }
}

/// Top-level tree values: each holds one reference to a device's block tree.
pub struct TreeRefs<'a>(pub &'a mut RefCounts);

impl ValueRefs for TreeRefs<'_> {
    fn inc(&mut self, tm: &mut Tm, value: &[u8]) -> Result<()> {
        tm.inc(crate::pdata::block::get_u64(value, 0))
    }

    fn dec(&mut self, tm: &mut Tm, value: &[u8]) -> Result<()> {
        let root = crate::pdata::block::get_u64(value, 0);
        btree::delete(tm, root, MAPPING_SIZE, &mut DataRefs(self.0))
    }
}

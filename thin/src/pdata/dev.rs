//! The metadata device: whole blocks read and written through the shared I/O engine's file.

use std::sync::Arc;

use rustbk_formats::EngineFile;

use super::block::{self, BLOCK_SIZE, Block, Kind};
use crate::error::{Error, Result};

/// A file or block device holding metadata blocks.
#[derive(Clone)]
pub struct MetaDev {
    file: Arc<EngineFile>,
    nr_blocks: u64,
}

impl MetaDev {
    /// Wraps `file`, which holds `nr_blocks` blocks (checked against its size).
    pub fn new(file: Arc<EngineFile>, nr_blocks: u64) -> Result<MetaDev> {
        let size = file.size()?;
        let needed = nr_blocks
            .checked_mul(BLOCK_SIZE as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("{nr_blocks} metadata blocks")))?;
        if size < needed {
            return Err(Error::corrupt(format!(
                "metadata device holds {size} bytes, the pool uses {needed}"
            )));
        }
        Ok(MetaDev { file, nr_blocks })
    }

    /// Blocks in use by the pool.
    pub fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    /// Blocks the device could hold.
    pub fn capacity(&self) -> Result<u64> {
        Ok(self.file.size()? / BLOCK_SIZE as u64)
    }

    /// Lets the pool use `nr_blocks` blocks (after the device grew).
    pub fn set_nr_blocks(&mut self, nr_blocks: u64) {
        self.nr_blocks = nr_blocks;
    }

    /// The file underneath.
    pub fn file(&self) -> &Arc<EngineFile> {
        &self.file
    }

    fn offset(&self, location: u64) -> Result<u64> {
        if location >= self.nr_blocks {
            return Err(Error::corrupt(format!(
                "metadata block {location} is past the end ({} blocks)",
                self.nr_blocks
            )));
        }
        Ok(location * BLOCK_SIZE as u64)
    }

    /// Reads the block at `location` without checking it.
    pub fn read_raw(&self, location: u64) -> Result<Block> {
        let mut b = block::zeroed();
        let got = self.file.read_at(&mut b[..], self.offset(location)?)?;
        if got != BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "metadata block {location} is truncated"
            )));
        }
        Ok(b)
    }

    /// Reads the block at `location` and checks that it is a `kind` block written there.
    pub fn read(&self, location: u64, kind: Kind) -> Result<Block> {
        let b = self.read_raw(location)?;
        block::verify(&b, kind, location)?;
        Ok(b)
    }

    /// Seals `b` as a `kind` block and writes it at `location`.
    pub fn write(&self, location: u64, kind: Kind, b: &mut Block) -> Result<()> {
        let at = self.offset(location)?;
        block::seal(b, kind, location);
        self.file.write_all_at(&b[..], at)?;
        Ok(())
    }

    /// Writes sealed blocks at consecutive locations from `first` on, in one write.
    pub fn write_sealed(&self, first: u64, blocks: &[u8]) -> Result<()> {
        let count = (blocks.len() / BLOCK_SIZE) as u64;
        if count == 0 || blocks.len() % BLOCK_SIZE != 0 {
            return Err(Error::InvalidArgument(format!(
                "{} bytes of blocks",
                blocks.len()
            )));
        }
        let last = first
            .checked_add(count - 1)
            .ok_or_else(|| Error::corrupt(format!("metadata run at {first}")))?;
        let at = self.offset(first)?;
        self.offset(last)?;
        self.file.write_all_at(blocks, at)?;
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.file.datasync()?)
    }
}

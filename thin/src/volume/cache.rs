//! A volume's mapping cache: virtual block -> data block and time, loaded from the pool in
//! chunks of [`CHUNK`] blocks, so that reads and overwrites of mapped blocks need no call to
//! the pool.

use foldhash::{HashMap, HashMapExt};

use crate::error::{Error, Result};
use crate::meta::{MAX_DATA_BLOCKS, Mapping};
use crate::port::PoolPort;

/// Virtual blocks looked up at a time.
pub const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_LEN: usize = 256;
/// Chunks kept before the cache starts over (128 MiB of entries).
const MAX_CHUNKS: usize = 1 << 16;
/// An unmapped entry. Mapped entries hold `block << 24 | time` with `block < 2^40 - 1`.
const UNMAPPED: u64 = u64::MAX;

/// The cache of one volume.
#[derive(Default)]
pub struct MapCache {
    chunks: HashMap<u64, Box<[u64]>>,
    nr_blocks: u64,
}

impl MapCache {
    /// A cache for a volume of `nr_blocks` virtual blocks.
    pub fn new(nr_blocks: u64) -> MapCache {
        MapCache {
            chunks: HashMap::new(),
            nr_blocks,
        }
    }

    /// Raises the number of virtual blocks (the volume grew). Entries past the old end that a
    /// chunk already holds stay unmapped, as they are in the pool: a volume's blocks past its
    /// end are unmapped when it shrinks, and growing maps nothing.
    pub fn grow(&mut self, nr_blocks: u64) {
        self.nr_blocks = self.nr_blocks.max(nr_blocks);
    }

    /// The mapping of `vblock`, loading its chunk from `port` if needed.
    pub fn get(&mut self, port: &mut dyn PoolPort, vblock: u64) -> Result<Option<Mapping>> {
        let index = vblock / CHUNK;
        let at = usize::try_from(vblock % CHUNK).unwrap_or(0);
        if let Some(chunk) = self.chunks.get(&index) {
            return Ok(decode(chunk[at]));
        }
        let chunk = self.load(port, index)?;
        let entry = chunk[at];
        if self.chunks.len() >= MAX_CHUNKS {
            self.chunks.clear();
        }
        self.chunks.insert(index, chunk);
        Ok(decode(entry))
    }

    fn load(&self, port: &mut dyn PoolPort, index: u64) -> Result<Box<[u64]>> {
        let start = index * CHUNK;
        let end = start.saturating_add(CHUNK).min(self.nr_blocks);
        let mut chunk = vec![UNMAPPED; CHUNK_LEN].into_boxed_slice();
        for (vblock, mapping) in port.lookup(start..end)? {
            let slot = vblock
                .checked_sub(start)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| chunk.get_mut(i));
            match (slot, mapping.block < MAX_DATA_BLOCKS - 1) {
                (Some(slot), true) => *slot = encode(mapping),
                _ => {
                    return Err(Error::corrupt(format!(
                        "the pool answered a lookup of {start}..{end} with {vblock} -> {}",
                        mapping.block
                    )));
                }
            }
        }
        Ok(chunk)
    }

    /// Records the mapping of `vblock` (if its chunk is loaded; else the next lookup finds it).
    pub fn set(&mut self, vblock: u64, mapping: Option<Mapping>) {
        let at = usize::try_from(vblock % CHUNK).unwrap_or(0);
        if let Some(chunk) = self.chunks.get_mut(&(vblock / CHUNK)) {
            chunk[at] = mapping.map_or(UNMAPPED, encode);
        }
    }

    /// Forgets what the pool maps `vblock` to: the next access looks it up again.
    pub fn forget(&mut self, vblock: u64) {
        self.chunks.remove(&(vblock / CHUNK));
    }

    /// Forgets the mappings of `vblocks` (after an unmap).
    pub fn unmap(&mut self, first: u64, end: u64) {
        if end.saturating_sub(first) / CHUNK > self.chunks.len() as u64 {
            let range = first..end;
            for (&index, chunk) in self.chunks.iter_mut() {
                for (i, slot) in chunk.iter_mut().enumerate() {
                    if range.contains(&(index * CHUNK + i as u64)) {
                        *slot = UNMAPPED;
                    }
                }
            }
            return;
        }
        for vblock in first..end {
            self.set(vblock, None);
        }
    }
}

fn encode(m: Mapping) -> u64 {
    (m.block << 24) | u64::from(m.time & 0xff_ffff)
}

fn decode(raw: u64) -> Option<Mapping> {
    (raw != UNMAPPED).then(|| Mapping {
        block: raw >> 24,
        time: u32::try_from(raw & 0xff_ffff).unwrap_or(0),
    })
}

//! The contract between a thin volume's data path (in a guest's worker process) and the pool
//! that owns the metadata (the pool service, or the pool opened in the same process).
//!
//! The data path never touches metadata blocks. It keeps its volume's mappings in a cache,
//! asks the pool for data blocks in batches, writes guest data into them itself, and then
//! tells the pool to map them. A flush asks the pool to commit. See `thin/DESIGN.md`.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::meta::Mapping;

/// What a volume's data path needs to know about its volume and pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The thin device id.
    pub id: u64,
    /// Data block size in bytes.
    pub block_size: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Mappings older than this pool time may be shared with a snapshot: a write to one copies
    /// the block first.
    pub snapshotted_time: u32,
    /// The pool time new mappings get.
    pub time: u32,
    /// The data device (file or block device) the blocks live on.
    pub data_path: std::path::PathBuf,
    /// The external origin's path and format name, if the volume has one.
    pub origin: Option<(std::path::PathBuf, String)>,
}

/// One new mapping for [`PoolPort::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMapping {
    /// The virtual block.
    pub vblock: u64,
    /// The data block, from [`PoolPort::provision`], now holding the block's whole contents.
    pub block: u64,
}

/// What [`PoolPort::map_start`] did.
#[derive(Debug)]
pub enum MapStart {
    /// The map was made (or failed) at once.
    Done(Result<()>),
    /// The map was sent; its answer comes with this ticket.
    Sent(u64),
}

/// Data blocks handed out to a port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handout {
    /// The blocks.
    pub blocks: Vec<u64>,
    /// Those of `blocks` known to read zeros: never handed out since the data file was
    /// filled with zeros (see `pool/fresh.rs`). Only this port writes them until it maps
    /// or releases them.
    pub zeroed: Vec<u64>,
}

/// A connection to the pool, for one volume.
pub trait PoolPort: Send {
    /// The volume this port serves. Also tells whether a snapshot changed the volume's
    /// `snapshotted_time` since the last call.
    fn info(&mut self) -> Result<VolumeInfo>;
    /// The volume's mappings of the virtual blocks in `vblocks`, in order.
    fn lookup(&mut self, vblocks: Range<u64>) -> Result<Vec<(u64, Mapping)>>;
    /// Hands out up to `count` free data blocks. A block handed out and never mapped goes
    /// back to the pool with [`PoolPort::release`], or when the port closes (the worker died).
    fn provision(&mut self, count: usize) -> Result<Vec<u64>> {
        Ok(self.provision_zeroed(count)?.blocks)
    }
    /// [`PoolPort::provision`], also telling which blocks are known to read zeros.
    fn provision_zeroed(&mut self, count: usize) -> Result<Handout>;
    /// Asks for up to `count` more blocks ahead of need, without waiting where the port can
    /// (a socket): the request's ticket, whose answer comes from
    /// [`PoolPort::provision_answer`]. The pool answers at once, with fewer blocks or none
    /// when few are free: it neither waits for space nor asks the other volumes for theirs.
    /// `None` when the port does not ask ahead (the pool is in this process, where a refill
    /// costs no round trip) or it failed.
    fn provision_ahead(&mut self, _count: usize) -> Option<u64> {
        None
    }
    /// The answer to the provision asked ahead as `ticket`: `None` while it has not arrived,
    /// unless `wait`, which waits for it as long as a call waits for its reply.
    fn provision_answer(&mut self, ticket: u64, _wait: bool) -> Option<Result<Handout>> {
        Some(Err(Error::Service(format!(
            "provision {ticket} was sent on another connection"
        ))))
    }
    /// Maps blocks whose contents are written; the block each replaces loses a reference.
    fn map(&mut self, mappings: &[NewMapping]) -> Result<()>;
    /// Starts [`PoolPort::map`] without waiting for the pool where the port can (a socket):
    /// the answer is then [`MapStart::Sent`] and comes from [`PoolPort::map_answer`], and
    /// the waker is called when it may have arrived. Later calls on the port are answered
    /// after it, in order. The default maps at once.
    fn map_start(&mut self, mappings: &[NewMapping]) -> MapStart {
        MapStart::Done(self.map(mappings))
    }
    /// The answer to the map started as `ticket`, once it arrived (`None` before). A ticket
    /// this port never gave (a port opened again since) is answered with an error.
    fn map_answer(&mut self, ticket: u64) -> Option<Result<()>> {
        Some(Err(Error::Service(format!(
            "map {ticket} was sent on another connection"
        ))))
    }
    /// Unmaps the virtual blocks in `vblocks`; returns the data blocks of the volume's
    /// mappings that no longer have any holder (free after the next commit), so the caller
    /// may discard them on the data device.
    fn unmap(&mut self, vblocks: Range<u64>) -> Result<Vec<u64>>;
    /// Gives back provisioned blocks that were never mapped.
    fn release(&mut self, blocks: &[u64]) -> Result<()>;
    /// Makes every mapping sent so far durable. The caller made the data durable first.
    fn commit(&mut self) -> Result<()>;
    /// Whether the pool asks the volume to pause (to snapshot it). The data path then starts
    /// no new write, lets the writes in flight finish, and calls [`PoolPort::paused`].
    fn pause_requested(&self) -> bool;
    /// Tells the pool the volume is quiet, and blocks until the pool resumes it. The info
    /// returned carries the new `snapshotted_time`: every cached mapping older than it is now
    /// shared.
    fn paused(&mut self) -> Result<VolumeInfo>;
    /// Whether the pool ran out of free blocks and asks this volume for the blocks it holds
    /// in reserve (handed out and not written into yet). Asking lowers the request. The data
    /// path then gives every reserved block back with [`PoolPort::release`], with an empty
    /// list if it holds none: that is its answer, which a write waiting for space on another
    /// volume waits for.
    fn give_back_requested(&mut self) -> bool {
        false
    }
    /// Called by the port when a pause or give-back request arrives, so a sleeping data path
    /// wakes up (it rings the bells of the volume's queues).
    fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>);
    /// Whether the port is lost for good (its connection to the pool service broke). The
    /// blocks it was handed are then no longer the volume's: the service gives them back to
    /// the pool when the connection closes, and may hand them to another volume at once.
    fn failed(&self) -> bool {
        false
    }
}

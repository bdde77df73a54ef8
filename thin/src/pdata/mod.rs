//! persistent-data: the on-disk structures dm-thin's metadata is made of, in layers. Blocks
//! and their checksums, the metadata device, reference counts, the transaction manager,
//! B-trees, then space maps; each layer uses only the ones before it.

pub mod block;
pub mod btree;
pub mod dev;
pub mod refs;
pub mod sm;

pub mod tm;

pub use block::{BLOCK_SIZE, Block, Kind};

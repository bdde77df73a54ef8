//! rustbk blkfront crate.

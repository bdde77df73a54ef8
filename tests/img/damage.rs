//! Damaging qcow2 images in place (16-bit refcounts, version 3), like a crash or a bug would.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// The fields of an image a damage needs.
pub struct Layout {
    file: std::fs::File,
    pub cluster_size: u64,
    pub l1_offset: u64,
    pub reftable_offset: u64,
}

pub const COPIED: u64 = 1 << 63;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

impl Layout {
    pub fn open(path: &Path) -> Layout {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open image");
        let mut l = Layout {
            file,
            cluster_size: 0,
            l1_offset: 0,
            reftable_offset: 0,
        };
        l.cluster_size = 1 << l.be32(20);
        l.l1_offset = l.be64(40);
        l.reftable_offset = l.be64(48);
        assert_eq!(l.be32(96), 4, "damage helpers expect 16-bit refcounts");
        l
    }

    pub fn be32(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, at).expect("read");
        u32::from_be_bytes(b)
    }

    pub fn be64(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, at).expect("read");
        u64::from_be_bytes(b)
    }

    pub fn put64(&self, at: u64, v: u64) {
        self.file.write_all_at(&v.to_be_bytes(), at).expect("write");
    }

    /// Offset of the first L2 table.
    pub fn l2(&self) -> u64 {
        self.be64(self.l1_offset) & OFFSET_MASK
    }

    /// Offset of L2 entry `index` of the first L2 table.
    pub fn l2_entry_at(&self, index: u64) -> u64 {
        self.l2() + index * 8
    }

    /// Host offset of guest cluster `index` (first L2 table).
    pub fn host_of(&self, index: u64) -> u64 {
        self.be64(self.l2_entry_at(index)) & OFFSET_MASK
    }

    fn refcount_at(&self, cluster: u64) -> u64 {
        let block = self.be64(self.reftable_offset);
        assert_ne!(block, 0, "refcount block 0 missing");
        assert!(
            cluster < self.cluster_size / 2,
            "cluster beyond refcount block 0"
        );
        block + cluster * 2
    }

    /// The stored refcount of `cluster`.
    pub fn refcount(&self, cluster: u64) -> u16 {
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, self.refcount_at(cluster))
            .expect("read");
        u16::from_be_bytes(b)
    }

    /// Overwrites the stored refcount of `cluster`.
    pub fn set_refcount(&self, cluster: u64, value: u16) {
        self.file
            .write_all_at(&value.to_be_bytes(), self.refcount_at(cluster))
            .expect("write");
    }

    /// Appends a cluster to the file and gives it refcount 1: a leak.
    pub fn leak_a_cluster(&self) {
        let len = self.file.metadata().expect("stat").len();
        let end = len.div_ceil(self.cluster_size) * self.cluster_size;
        self.file.set_len(end + self.cluster_size).expect("grow");
        self.set_refcount(end / self.cluster_size, 1);
    }
}

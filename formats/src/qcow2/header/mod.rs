//! The qcow2 header (versions 2 and 3) and its extensions: parse, validate, serialise.
//!
//! Everything read from the file is hostile: every field is range-checked against the file size
//! and hard caps before any table is read, and every refusal names what is wrong.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::Error;

use super::layout::small;

/// "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Shortest version 3 header.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Length of the version 3 header this crate writes (with the compression type and padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest and largest cluster_bits accepted (512 bytes to 2 MiB, like QEMU).
pub const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;
/// Largest L1 table accepted, in bytes (QEMU's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (QEMU's limit).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest virtual size accepted (2^61 bytes: keeps every offset computation far from overflow).
pub const MAX_SIZE: u64 = 1 << 61;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be inconsistent.
    pub const DIRTY: u64 = 1 << 0;
    /// Any structure may be corrupt: never write.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest clusters live in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// Compressed clusters use `compression_type`, not zlib.
    pub const COMPRESSION: u64 = 1 << 3;
    /// L2 entries are 128 bits with subcluster bitmaps.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this implementation knows.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTENDED_L2;
}

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const FEATURE_ENTRY_LEN: usize = 48;

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Raw deflate (zlib without header), the default.
    #[default]
    Deflate,
    /// Zstandard frames.
    Zstd,
}

/// One entry of the feature name table extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number within the bitmap.
    pub bit: u8,
    /// The feature's name.
    pub name: String,
}

/// A parsed, validated qcow2 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is stored (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the header structure in bytes.
    pub header_length: u32,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Backing file name as stored (relative to the image's folder unless absolute).
    pub backing_file: Option<PathBuf>,
    /// Backing file format extension.
    pub backing_format: Option<String>,
    /// External data file name extension.
    pub data_file: Option<PathBuf>,
    /// Feature name table extension.
    pub feature_names: Vec<FeatureName>,
}

fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidImage(what.into())
}

fn be32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = buf.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_be_bytes(b)
}

fn be64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = buf.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}

/// Reads the cluster size from the first bytes of an image, checking magic, version and
/// cluster_bits, so the caller knows how much of the file holds the header (one cluster).
pub fn peek_cluster_bits(head: &[u8]) -> Result<u32, Error> {
    if head.len() < V2_HEADER_LEN as usize {
        return Err(invalid(format!(
            "truncated header: {} bytes, need at least {V2_HEADER_LEN}",
            head.len()
        )));
    }
    if head[..4] != MAGIC {
        return Err(invalid("bad qcow2 magic"));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(Error::UnsupportedFeature(format!(
            "qcow2 version {version}"
        )));
    }
    let bits = be32(head, 20);
    if !CLUSTER_BITS.contains(&bits) {
        return Err(Error::UnsupportedFeature(format!(
            "cluster_bits {bits} (supported: 9..=21)"
        )));
    }
    Ok(bits)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses and validates the header from `first` (the first cluster of the image, or all of
    /// the file if shorter) for an image file of `file_size` bytes.
    pub fn parse(first: &[u8], file_size: u64) -> Result<Header, Error> {
        let cluster_bits = peek_cluster_bits(first)?;
        let mut h = Header::fixed_fields(first, cluster_bits)?;
        h.parse_extensions(first)?;
        h.check_features()?;
        h.check_layout(file_size)?;
        h.parse_backing_name(first)?;
        Ok(h)
    }

    fn fixed_fields(b: &[u8], cluster_bits: u32) -> Result<Header, Error> {
        let version = be32(b, 4);
        let cluster_size = 1u64 << cluster_bits;
        let crypt_method = be32(b, 32);
        if crypt_method != 0 {
            return Err(Error::UnsupportedFeature(format!(
                "encryption (crypt_method {crypt_method})"
            )));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits,
            size: be64(b, 24),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Deflate,
            backing_file: None,
            backing_format: None,
            data_file: None,
            feature_names: Vec::new(),
        };
        if version == 3 {
            h.header_length = be32(b, 100);
            let len = u64::from(h.header_length);
            if len < u64::from(V3_MIN_HEADER_LEN) || len % 8 != 0 || len > cluster_size {
                return Err(invalid(format!("header_length {len}")));
            }
            if b.len() < h.header_length as usize {
                return Err(invalid("truncated header"));
            }
            h.incompatible = be64(b, 72);
            h.compatible = be64(b, 80);
            h.autoclear = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.compression = compression_type(b, &h)?;
        }
        Ok(h)
    }

    fn check_features(&self) -> Result<(), Error> {
        let unknown = self.incompatible & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Error::UnsupportedFeature(format!(
                "unknown incompatible feature bits: {}",
                self.describe_incompatible(unknown)
            )));
        }
        if self.incompatible & incompat::DATA_FILE != 0 {
            return Err(Error::UnsupportedFeature("external data file".to_owned()));
        }
        if self.incompatible & incompat::EXTENDED_L2 != 0 {
            return Err(Error::UnsupportedFeature(
                "extended L2 entries (subclusters)".to_owned(),
            ));
        }
        if self.refcount_order > 6 {
            return Err(invalid(format!(
                "refcount_order {} (at most 6)",
                self.refcount_order
            )));
        }
        Ok(())
    }

    /// Checks sizes, alignment, bounds and overlaps of the header, L1 and refcount tables.
    fn check_layout(&self, file_size: u64) -> Result<(), Error> {
        let cs = self.cluster_size();
        if self.size > MAX_SIZE {
            return Err(invalid(format!("virtual size {} too large", self.size)));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(invalid(format!(
                "L1 table of {} entries exceeds the {MAX_L1_BYTES}-byte cap",
                self.l1_size
            )));
        }
        let needed = self.l1_entries_needed();
        if u64::from(self.l1_size) < needed {
            return Err(invalid(format!(
                "L1 table of {} entries too small for {} bytes (need {needed})",
                self.l1_size, self.size
            )));
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 || reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(invalid(format!(
                "refcount table of {} clusters",
                self.refcount_table_clusters
            )));
        }
        let l1 = table_range("L1 table", self.l1_table_offset, l1_bytes, cs, file_size)?;
        let rt = table_range(
            "refcount table",
            self.refcount_table_offset,
            reftable_bytes,
            cs,
            file_size,
        )?;
        if self.nb_snapshots > 0 && self.snapshots_offset % cs != 0 {
            return Err(invalid("snapshot table offset not cluster-aligned"));
        }
        let header = 0..cs;
        let l1_clusters = l1.start..l1.end.div_ceil(cs) * cs;
        if l1_bytes > 0 && (overlaps(&header, &l1_clusters) || overlaps(&l1_clusters, &rt)) {
            return Err(invalid(
                "L1 table overlaps the header or the refcount table",
            ));
        }
        if overlaps(&header, &rt) {
            return Err(invalid("refcount table overlaps the header"));
        }
        Ok(())
    }

    /// L1 entries needed to map `size` bytes.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l2 = 1u64 << (2 * self.cluster_bits - 3);
        self.size.div_ceil(per_l2)
    }

    fn parse_extensions(&mut self, b: &[u8]) -> Result<(), Error> {
        let limit = b.len().min(small(self.cluster_size()));
        let mut at = self.header_length as usize;
        loop {
            if at + 8 > limit {
                // No end marker before the cluster ends: treat as the end (QEMU does the same).
                return Ok(());
            }
            let kind = be32(b, at);
            let len = be32(b, at + 4) as usize;
            let data_start = at + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|&e| e <= limit)
                .ok_or_else(|| {
                    invalid(format!("header extension {kind:#x} overruns the cluster"))
                })?;
            let data = &b[data_start..data_end];
            match kind {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => self.backing_format = Some(ascii(data, "backing format")?),
                EXT_FEATURE_TABLE => self.feature_names = feature_table(data),
                EXT_DATA_FILE => self.data_file = Some(PathBuf::from(OsStr::from_bytes(data))),
                EXT_BITMAPS | EXT_CRYPTO => {}
                _ => tracing::debug!(kind, "ignoring unknown qcow2 header extension"),
            }
            at = data_start + len.div_ceil(8) * 8;
        }
    }

    fn parse_backing_name(&mut self, b: &[u8]) -> Result<(), Error> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let len = self.backing_file_size as usize;
        if len == 0 || len > 1023 {
            return Err(invalid(format!("backing file name of {len} bytes")));
        }
        let start = usize::try_from(self.backing_file_offset)
            .ok()
            .filter(|&s| s >= self.header_length as usize);
        let name = start
            .and_then(|s| b.get(s..s.checked_add(len)?))
            .ok_or_else(|| invalid("backing file name outside the header cluster"))?;
        self.backing_file = Some(PathBuf::from(OsStr::from_bytes(name)));
        Ok(())
    }

    /// The feature names of the incompatible bits in `bits`, for messages.
    pub fn describe_incompatible(&self, bits: u64) -> String {
        let names: Vec<String> = (0..64u8)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(|b| {
                self.feature_names
                    .iter()
                    .find(|f| f.kind == 0 && f.bit == b)
                    .map_or_else(|| format!("bit {b}"), |f| format!("bit {b} ({})", f.name))
            })
            .collect();
        names.join(", ")
    }
}

fn compression_type(b: &[u8], h: &Header) -> Result<Compression, Error> {
    let present = h.header_length > 104;
    let value = if present { b[104] } else { 0 };
    let flagged = h.incompatible & incompat::COMPRESSION != 0;
    match (flagged, value) {
        (false, 0) => Ok(Compression::Deflate),
        (true, 1) => Ok(Compression::Zstd),
        (true, 0) => Err(invalid(
            "compression type bit set without a compression type",
        )),
        (false, v) => Err(invalid(format!(
            "compression type {v} without the compression type bit"
        ))),
        (true, v) => Err(Error::UnsupportedFeature(format!("compression type {v}"))),
    }
}

/// Checks a table's alignment and bounds; returns its byte range.
fn table_range(
    what: &str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_size: u64,
) -> Result<std::ops::Range<u64>, Error> {
    if len == 0 {
        return Ok(offset..offset);
    }
    if offset == 0 || offset % cluster_size != 0 {
        return Err(invalid(format!(
            "{what} offset {offset:#x} not cluster-aligned"
        )));
    }
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= file_size)
        .ok_or_else(|| {
            invalid(format!(
                "{what} at {offset:#x} runs past the end of the file"
            ))
        })?;
    Ok(offset..end)
}

fn overlaps(a: &std::ops::Range<u64>, b: &std::ops::Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

fn ascii(data: &[u8], what: &str) -> Result<String, Error> {
    std::str::from_utf8(data)
        .map(str::to_owned)
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn feature_table(data: &[u8]) -> Vec<FeatureName> {
    data.chunks_exact(FEATURE_ENTRY_LEN)
        .map(|e| {
            let name = &e[2..];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            FeatureName {
                kind: e[0],
                bit: e[1],
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
            }
        })
        .collect()
}

/// Offset of the autoclear field in a version 3 header.
pub const AUTOCLEAR_OFFSET: u64 = 88;
/// Offset of the refcount table offset (8 bytes) followed by its cluster count (4 bytes).
pub const REFTABLE_FIELDS_OFFSET: u64 = 48;
/// Offset of the virtual size field.
pub const SIZE_OFFSET: u64 = 24;
/// Offset of the L1 size (4 bytes) followed by the L1 table offset (8 bytes).
pub const L1_FIELDS_OFFSET: u64 = 36;

mod serialize;
#[cfg(test)]
mod tests;

pub(crate) use serialize::put64;
pub use serialize::{NewHeader, serialize, with_backing};
#[cfg(test)]
use serialize::{put_extension, put32};

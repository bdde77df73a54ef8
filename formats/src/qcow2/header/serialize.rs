//! Serialising a new image's first cluster: header fields, extensions, backing file name.

use crate::error::Error;

use super::{EXT_BACKING_FORMAT, EXT_END, MAGIC, V2_HEADER_LEN, V3_HEADER_LEN};

/// What [`serialize`] writes into a new image's first cluster.
#[derive(Clone, Debug)]
pub struct NewHeader<'a> {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// L1 entries and offset.
    pub l1: (u32, u64),
    /// Refcount table offset and clusters.
    pub reftable: (u64, u32),
    /// log2 of the refcount width (4 for version 2).
    pub refcount_order: u32,
    /// Backing file name and optional format.
    pub backing: Option<(&'a [u8], Option<&'a str>)>,
}

/// The first cluster of a new image: header, extensions, backing file name.
pub fn serialize(h: &NewHeader<'_>) -> Result<Vec<u8>, Error> {
    let cs = 1usize << h.cluster_bits;
    let mut b = vec![0u8; cs];
    b[..4].copy_from_slice(&MAGIC);
    put32(&mut b, 4, h.version);
    put32(&mut b, 20, h.cluster_bits);
    put64(&mut b, 24, h.size);
    put32(&mut b, 36, h.l1.0);
    put64(&mut b, 40, h.l1.1);
    put64(&mut b, 48, h.reftable.0);
    put32(&mut b, 56, h.reftable.1);
    let mut at = V2_HEADER_LEN as usize;
    if h.version == 3 {
        put32(&mut b, 96, h.refcount_order);
        put32(&mut b, 100, V3_HEADER_LEN);
        at = V3_HEADER_LEN as usize;
    }
    if let Some((name, format)) = h.backing {
        if let Some(format) = format {
            at = put_extension(&mut b, at, EXT_BACKING_FORMAT, format.as_bytes())?;
        }
        at = put_extension(&mut b, at, EXT_END, &[])?;
        let end = at + name.len();
        if name.is_empty() || name.len() > 1023 || end > cs {
            return Err(Error::InvalidArgument(format!(
                "backing file name of {} bytes does not fit",
                name.len()
            )));
        }
        b[at..end].copy_from_slice(name);
        put64(&mut b, 8, at as u64);
        put32(&mut b, 16, u32::try_from(name.len()).unwrap_or(0));
    } else {
        put_extension(&mut b, at, EXT_END, &[])?;
    }
    Ok(b)
}

pub(super) fn put_extension(
    b: &mut [u8],
    at: usize,
    kind: u32,
    data: &[u8],
) -> Result<usize, Error> {
    let next = at + 8 + data.len().div_ceil(8) * 8;
    if next > b.len() {
        return Err(Error::InvalidArgument(
            "header extensions do not fit".to_owned(),
        ));
    }
    put32(b, at, kind);
    put32(b, at + 4, u32::try_from(data.len()).unwrap_or(0));
    b[at + 8..at + 8 + data.len()].copy_from_slice(data);
    Ok(next)
}

/// Big-endian u32 at `at` (the caller guarantees `at + 4 <= b.len()`).
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(d) = b.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// Big-endian u64 at `at` (the caller guarantees `at + 8 <= b.len()`).
pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(d) = b.get_mut(at..at + 8) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// The used bytes of an existing image's first cluster `first` (header `h`, parsed from it)
/// with its backing reference replaced by `backing` (name and optional format; `None`: no
/// backing file). The header fields and every other extension are kept; the backing format
/// extension, the end marker and the name are written after them, as qemu lays them out.
/// The result is as long as the longer of the old and new used bytes (what is no longer used
/// is zeroed). Refused when the new layout does not fit in the first cluster.
pub fn with_backing(
    first: &[u8],
    h: &super::Header,
    backing: Option<(&[u8], Option<&str>)>,
) -> Result<Vec<u8>, Error> {
    let cs = usize::try_from(h.cluster_size()).unwrap_or(usize::MAX);
    let start = h.header_length as usize;
    let (kept, old_end) = other_extensions(first, start, cs);
    let mut b = vec![0u8; cs];
    b[..start].copy_from_slice(first.get(..start).unwrap_or_default());
    let mut at = start;
    for (kind, data) in &kept {
        at = put_extension(&mut b, at, *kind, data)?;
    }
    if let Some((_, Some(format))) = backing {
        at = put_extension(&mut b, at, EXT_BACKING_FORMAT, format.as_bytes())?;
    }
    at = put_extension(&mut b, at, EXT_END, &[])?;
    let (offset, len) = match backing {
        Some((name, _)) => {
            let end = at.saturating_add(name.len());
            if name.is_empty() || name.len() > 1023 || end > cs {
                return Err(Error::InvalidArgument(format!(
                    "the backing file name of {} bytes does not fit in the image's header \
                     cluster ({} bytes free after the header extensions; at most 1023)",
                    name.len(),
                    cs - at
                )));
            }
            b[at..end].copy_from_slice(name);
            let placed = at;
            at = end;
            (placed as u64, name.len())
        }
        None => (0, 0),
    };
    put64(&mut b, 8, offset);
    put32(&mut b, 16, u32::try_from(len).unwrap_or(0));
    let old_name_end = usize::try_from(h.backing_file_offset)
        .unwrap_or(0)
        .saturating_add(h.backing_file_size as usize);
    let used = at.max(old_end).max(old_name_end).min(cs);
    b.truncate(used);
    Ok(b)
}

/// The extensions after the header fields other than the backing format and the end marker,
/// and where the old extension area ends.
fn other_extensions(b: &[u8], start: usize, cs: usize) -> (Vec<(u32, Vec<u8>)>, usize) {
    let limit = b.len().min(cs);
    let mut out = Vec::new();
    let mut at = start;
    while at + 8 <= limit {
        let kind = super::be32(b, at);
        let len = super::be32(b, at + 4) as usize;
        let Some(data) = b.get(at + 8..(at + 8).saturating_add(len)) else {
            break;
        };
        let next = at + 8 + len.div_ceil(8) * 8;
        if kind == EXT_END {
            return (out, next);
        }
        if kind != EXT_BACKING_FORMAT {
            out.push((kind, data.to_vec()));
        }
        at = next;
    }
    (out, at.min(limit))
}

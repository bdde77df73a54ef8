//! Compressed grains (streamOptimized): a grain marker (`lba` u64, `size` u32) followed by
//! `size` bytes of a zlib stream that inflates to at most one grain.

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::Error;

use super::metaio::{MetaIo, MetaKind};

/// Bytes of a grain marker before the compressed data.
pub const GRAIN_MARKER: u64 = 12;

fn bad(why: String) -> Error {
    Error::InvalidImage(format!("VMDK compressed grain: {why}"))
}

/// Reads and inflates the compressed grain whose marker is at `at` into `out` (one grain);
/// bytes the stream does not cover read as zeros.
pub(crate) fn read_grain(io: &dyn MetaIo, at: u64, out: &mut [u8]) -> Result<(), Error> {
    let mut marker = [0u8; 12];
    io.read_exact(MetaKind::Grain, at, &mut marker)?;
    let size = u32::from_le_bytes([marker[8], marker[9], marker[10], marker[11]]);
    let limit = out.len().saturating_mul(2).saturating_add(4096);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size == 0 || size > limit {
        return Err(bad(format!(
            "at {at:#x}: {size} compressed bytes (1..={limit} for a grain of {})",
            out.len()
        )));
    }
    let mut input = vec![0u8; size];
    io.read_exact(MetaKind::Grain, at + GRAIN_MARKER, &mut input)?;
    let got = inflate(&input, out)?;
    out[got..].fill(0);
    Ok(())
}

/// Inflates a zlib stream into `out`; how many bytes came out.
pub(crate) fn inflate(input: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    let mut d = Decompress::new(true);
    loop {
        let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
        let produced = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
        let (Some(src), Some(dst)) = (input.get(consumed..), out.get_mut(produced..)) else {
            return Err(bad("bad stream offsets".to_owned()));
        };
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress(src, dst, FlushDecompress::Finish)
            .map_err(|e| bad(format!("corrupt deflate data: {e}")))?;
        let produced = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
        if status == Status::StreamEnd {
            return Ok(produced);
        }
        if produced == out.len() {
            return Err(bad(format!("inflates to more than {} bytes", out.len())));
        }
        if (d.total_in(), d.total_out()) == before {
            return Err(bad("truncated deflate stream".to_owned()));
        }
    }
}

/// Deflates one grain as a zlib stream.
pub(crate) fn deflate(data: &[u8]) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

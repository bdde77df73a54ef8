//! Decompression of compressed clusters: raw deflate (the default) or zstd.
//!
//! The stored length of a compressed cluster is an upper bound (whole sectors), so the input may
//! carry trailing bytes of the next cluster: decompression stops once a full cluster came out.

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::Error;

use super::header::Compression;

fn short(got: usize, want: usize) -> Error {
    Error::InvalidImage(format!(
        "compressed cluster decompresses to {got} bytes instead of {want}"
    ))
}

/// Decompresses `input` into all of `out` (one cluster).
pub(crate) fn decompress(kind: Compression, input: &[u8], out: &mut [u8]) -> Result<(), Error> {
    match kind {
        Compression::Deflate => inflate(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let mut d = Decompress::new(false);
    loop {
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let consumed = usize::try_from(before_in).unwrap_or(usize::MAX);
        let produced = usize::try_from(before_out).unwrap_or(usize::MAX);
        let (Some(src), Some(dst)) = (input.get(consumed..), out.get_mut(produced..)) else {
            return Err(short(produced, out.len()));
        };
        if dst.is_empty() {
            return Ok(());
        }
        let status = d
            .decompress(src, dst, FlushDecompress::Finish)
            .map_err(|e| Error::InvalidImage(format!("corrupt deflate data: {e}")))?;
        let progressed = d.total_in() != before_in || d.total_out() != before_out;
        if status == Status::StreamEnd || !progressed {
            let got = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
            return if got == out.len() {
                Ok(())
            } else {
                Err(short(got, out.len()))
            };
        }
    }
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), Error> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let bad = |e: std::io::Error| Error::InvalidImage(format!("corrupt zstd data: {e}"));
    let mut decoder = Decoder::new().map_err(bad)?;
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    loop {
        let (before_in, before_out) = (src.pos(), dst.pos());
        decoder.run(&mut src, &mut dst).map_err(bad)?;
        if dst.pos() == dst.capacity() {
            return Ok(());
        }
        if src.pos() == before_in && dst.pos() == before_out {
            return Err(short(dst.pos(), dst.capacity()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).expect("compress");
        enc.finish().expect("finish")
    }

    #[test]
    fn deflate_with_trailing_garbage_decompresses_one_cluster() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let mut input = deflate_raw(&data);
        input.extend_from_slice(&[0xde; 300]);
        let mut out = vec![0u8; 4096];
        decompress(Compression::Deflate, &input, &mut out).expect("inflate");
        assert_eq!(out, data);
    }

    #[test]
    fn truncated_deflate_is_an_error_not_a_short_cluster() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        let input = deflate_raw(&data);
        let mut out = vec![0u8; 4096];
        let err = decompress(Compression::Deflate, &input[..input.len() / 2], &mut out);
        assert!(matches!(err, Err(Error::InvalidImage(_))), "{err:?}");
        let err = decompress(Compression::Deflate, &[0xff; 64], &mut out);
        assert!(matches!(err, Err(Error::InvalidImage(_))), "{err:?}");
    }

    #[test]
    fn zstd_with_trailing_garbage_decompresses_one_cluster() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 13) as u8).collect();
        let mut input = zstd::bulk::compress(&data, 3).expect("zstd");
        input.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; 8192];
        decompress(Compression::Zstd, &input, &mut out).expect("unzstd");
        assert_eq!(out, data);
        let err = decompress(Compression::Zstd, &input[..10], &mut out);
        assert!(err.is_err());
    }
}

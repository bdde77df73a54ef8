//! `rustbk img compare`: exit 0 identical, 1 different, 2 error, like qemu-img. The part of
//! the larger image past the smaller one's end must read as zeros.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rustbk_formats::ImageQueue;
use rustbk_formats::buffer::gather;

use super::pipe::{self, CHUNK, DEPTH};
use super::progress::Progress;
use super::{FormatArg, open, read_access};

/// `rustbk img compare [-f FMT] [-F FMT] [-p] [-U] A B`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Format of A (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format_a: Option<FormatArg>,
    /// Format of B (probed when not given).
    #[arg(short = 'F', value_enum)]
    pub format_b: Option<FormatArg>,
    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Open the image even if another process writes it (what is read may be inconsistent),
    /// as qemu-img's `-U`.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
}

/// Compares; errors become exit status 2.
pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    match compare(&args) {
        Ok(None) => {
            println!("Images are identical.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Some(offset)) => {
            println!("Content mismatch at offset {offset}!");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("rustbk: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

/// The first differing offset (rounded down to its 512-byte sector), if any.
fn compare(args: &CompareArgs) -> anyhow::Result<Option<u64>> {
    let access = read_access(args.force_share);
    let a = open(&args.a, args.format_a.map(Into::into), access)?;
    let b = open(&args.b, args.format_b.map(Into::into), access)?;
    let (size_a, size_b) = (a.geometry().size, b.geometry().size);
    if size_a != size_b {
        println!("Warning: Image size mismatch!");
    }
    let common = size_a.min(size_b);
    let mut qa = a.open_queue(pipe::QUEUE_DEPTH)?;
    let mut qb = b.open_queue(pipe::QUEUE_DEPTH)?;
    let mut progress = Progress::new(args.progress, false);
    let total = size_a.max(size_b);
    let ranges: Vec<(u64, u64)> = pipe::chunks(0, common, CHUNK).collect();
    let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
    for window in ranges.chunks(DEPTH) {
        let got_a = pipe::read_all(&mut *qa, window)?;
        let got_b = pipe::read_all(&mut *qb, window)?;
        for ((range, x), y) in window.iter().zip(&got_a).zip(&got_b) {
            load(&mut buf_a, x);
            load(&mut buf_b, y);
            if let Some(at) = buf_a.iter().zip(&buf_b).position(|(p, q)| p != q) {
                return Ok(Some(sector_of(range.0, at)));
            }
        }
        progress.update(window.last().map_or(0, |r| r.0 + r.1), total);
    }
    let larger: &mut dyn ImageQueue = if size_a > size_b { &mut *qa } else { &mut *qb };
    let rest = nonzero_tail(larger, common, total, &mut progress)?;
    progress.finish();
    Ok(rest)
}

fn load(dst: &mut Vec<u8>, src: &rustbk_formats::SharedBuf) {
    dst.resize(src.len(), 0);
    gather(src, dst);
}

fn sector_of(start: u64, at: usize) -> u64 {
    (start + at as u64) / 512 * 512
}

/// The first non-zero sector of `q` in `[start, end)`.
fn nonzero_tail(
    q: &mut dyn ImageQueue,
    start: u64,
    end: u64,
    progress: &mut Progress,
) -> anyhow::Result<Option<u64>> {
    let ranges: Vec<(u64, u64)> = pipe::chunks(start, end - start, CHUNK).collect();
    let mut buf = Vec::new();
    for window in ranges.chunks(DEPTH) {
        for (range, got) in window.iter().zip(pipe::read_all(q, window)?) {
            load(&mut buf, &got);
            if let Some(at) = buf.iter().position(|&x| x != 0) {
                return Ok(Some(sector_of(range.0, at)));
            }
        }
        progress.update(window.last().map_or(0, |r| r.0 + r.1), end);
    }
    Ok(None)
}

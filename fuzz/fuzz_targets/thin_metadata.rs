//! Fuzzes thin pool metadata: the input is a metadata device image. `check` must report on
//! it; `Metadata::open`, lookups of every device and a few changes and a commit must succeed or
//! fail with an error. Nothing may panic, and memory stays bounded by the image's size.
//!
//! Input: `[flags] [image]`. The image is padded to whole blocks, and to the number of blocks
//! its superblock records (at most [`MAX_BLOCKS`]), so seeds need only hold the blocks a pool
//! uses. Flag bit 0 reseals every block's checksum (and location) as the type it looks like,
//! so the fuzzer reaches past the checksums. If `check` finds no problem, the pool must still
//! check clean after the changes and the commit.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;
use rustbk_thin::Error;
use rustbk_thin::check::{self, CheckOptions};
use rustbk_thin::meta::{Metadata, Superblock};
use rustbk_thin::pdata::block::{self, BLOCK_SIZE, Kind, get_u32, get_u64};

/// Largest image, in blocks.
const MAX_BLOCKS: u64 = 1024;
/// Data blocks the data device holds.
const DATA_BLOCKS: u64 = 1 << 16;
/// Problems a report may hold.
const MAX_PROBLEMS: usize = 100;

/// One private folder per fuzzing process; the image file is rewritten for every input.
fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rustbk-fuzz-thin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz work folder");
        dir.join("meta")
    })
}

/// The image: padded to whole blocks and to the superblock's size, resealed if asked.
fn image(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut image = data.to_vec();
    let claimed = match image.len() >= 352 {
        true => get_u64(&image, 344).min(MAX_BLOCKS),
        false => 0,
    };
    let blocks = (image.len() as u64)
        .div_ceil(BLOCK_SIZE as u64)
        .max(claimed)
        .max(1);
    image.resize(blocks as usize * BLOCK_SIZE, 0);
    if flags & 1 != 0 {
        reseal(&mut image);
    }
    image
}

/// Seals every block as the type it looks like: block 0 the superblock, the block its
/// metadata space map root names the index, a block with node flags a node, others bitmaps.
fn reseal(image: &mut [u8]) {
    let index = get_u64(image, 64 + 128 + 16);
    for (i, chunk) in image.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        let location = i as u64;
        let kind = match get_u32(chunk, 4) {
            _ if location == 0 => Kind::Superblock,
            _ if location == index => Kind::Index,
            1 | 2 => Kind::Node,
            _ => Kind::Bitmap,
        };
        let b: &mut [u8; BLOCK_SIZE] = chunk.try_into().expect("whole block");
        block::seal(b, kind, location);
    }
}

fn open_file() -> Option<Arc<EngineFile>> {
    EngineFile::open(
        image_path(),
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .ok()
    .map(Arc::new)
}

fn run_check(file: &Arc<EngineFile>) -> bool {
    let opts = CheckOptions {
        max_problems: MAX_PROBLEMS,
    };
    let report = check::check(file.clone(), &opts).expect("check of a readable file");
    assert!(report.problems.len() <= MAX_PROBLEMS);
    let _ = report.to_string();
    report.is_clean()
}

/// Reads every device, then makes a few changes and commits; stops at the first error.
fn exercise(md: &mut Metadata, seed: u64) -> rustbk_thin::Result<()> {
    for id in md.devices() {
        md.lookup_range(id, 0..u64::MAX)?;
        md.lookup(id, seed)?;
    }
    let first = md.devices().first().copied().unwrap_or(0);
    if md.details(first).is_err() {
        md.create_thin(first)?;
    }
    for v in seed..seed + 8 {
        let b = md.alloc_data()?;
        md.insert(first, v, b)?;
    }
    md.create_snapshot(u64::MAX, first)?;
    md.remove(first, seed)?;
    md.delete_thin(u64::MAX)?;
    md.commit()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if rest.len() as u64 > MAX_BLOCKS * BLOCK_SIZE as u64 {
        return;
    }
    if std::fs::write(image_path(), image(flags, rest)).is_err() {
        return;
    }
    let Some(file) = open_file() else {
        return;
    };
    let clean = run_check(&file) && opens_read_write(&file);
    let seed = u64::from(flags >> 1) * 100;
    let Ok(mut md) = Metadata::open(file.clone(), |_| DATA_BLOCKS) else {
        assert!(!clean, "a pool that checks clean must open");
        return;
    };
    let changed = exercise(&mut md, seed);
    drop(md);
    if clean {
        if let Err(e @ (Error::Corrupt(_) | Error::BadBlock { .. })) = changed {
            panic!("a pool that checks clean is corrupt after changes: {e}");
        }
        assert!(
            run_check(&file),
            "a clean pool no longer checks clean after a commit"
        );
    }
});

/// Whether a pool that checks clean may be opened for writing: no flag asking for a check or
/// for read-only use, and a data space map the data device holds.
fn opens_read_write(file: &EngineFile) -> bool {
    let mut sb = [0u8; BLOCK_SIZE];
    if file.read_at(&mut sb, 0).ok() != Some(BLOCK_SIZE) {
        return false;
    }
    let sb = Superblock::parse(&sb);
    sb.flags == 0 && sb.compat_ro_flags == 0 && sb.data_sm.nr_blocks <= DATA_BLOCKS
}

//! The superblock: the only block found by its place rather than by a reference.

use std::sync::Arc;

use rustbk_formats::EngineFile;

use super::{Area, Problem, Report, describe};
use crate::meta::{
    self, MAGIC, MAX_METADATA_BLOCKS, NEEDS_CHECK, Superblock, TIME_MASK, VERSION,
    check_data_block_size,
};
use crate::pdata::block::{self, BLOCK_SECTORS, Kind, get_u64};
use crate::pdata::dev::MetaDev;

/// Checks the superblock of a metadata device of `whole` blocks. Returns it and the number of
/// blocks the rest of the check may read, or `None` if nothing past it can be trusted (no
/// block, or not a thin pool).
pub(super) fn check(
    file: &Arc<EngineFile>,
    whole: u64,
    report: &mut Report,
) -> Option<(Superblock, u64)> {
    let mut add = |message: String| {
        report.add(Problem {
            area: Area::Superblock,
            block: Some(0),
            device: None,
            message,
        })
    };
    if whole == 0 {
        add("the metadata device holds no whole block".into());
        return None;
    }
    let raw = match MetaDev::new(file.clone(), 1).and_then(|d| d.read_raw(0)) {
        Ok(raw) => raw,
        Err(e) => {
            add(format!("cannot be read: {}", describe(e)));
            return None;
        }
    };
    if let Err(e) = block::verify(&raw, Kind::Superblock, 0) {
        add(describe(e));
    }
    if get_u64(&raw[..], 32) != MAGIC {
        add("bad magic: not a thin pool's metadata".into());
        return None;
    }
    let sb = Superblock::parse(&raw);
    for message in field_problems(&sb, meta::metadata_block_size(&raw), whole) {
        add(message);
    }
    let usable = sb
        .metadata_nr_blocks
        .clamp(1, whole.clamp(1, MAX_METADATA_BLOCKS));
    Some((sb, usable))
}

/// What is wrong with the superblock's fields.
fn field_problems(sb: &Superblock, metadata_block_size: u32, whole: u64) -> Vec<String> {
    let mut out = Vec::new();
    if !(1..=VERSION).contains(&sb.version) {
        out.push(format!(
            "unknown metadata version {} (1 to {VERSION} are known)",
            sb.version
        ));
    }
    if sb.incompat_flags != 0 {
        out.push(format!(
            "unknown incompatible feature flags {:#x}",
            sb.incompat_flags
        ));
    }
    if sb.flags & !NEEDS_CHECK != 0 {
        out.push(format!("unknown flags {:#x}", sb.flags & !NEEDS_CHECK));
    }
    if sb.time > TIME_MASK {
        out.push(format!(
            "pool time {} does not fit the 24 bits of a mapping",
            sb.time
        ));
    }
    if metadata_block_size != BLOCK_SECTORS {
        out.push(format!(
            "metadata block size of {metadata_block_size} sectors, not {BLOCK_SECTORS}"
        ));
    }
    if let Err(e) = check_data_block_size(sb.data_block_size) {
        out.push(describe(e));
    }
    if sb.metadata_nr_blocks == 0 || sb.metadata_nr_blocks > whole {
        out.push(format!(
            "records {} metadata blocks, the device holds {whole}",
            sb.metadata_nr_blocks
        ));
    }
    if sb.metadata_nr_blocks > MAX_METADATA_BLOCKS {
        out.push(format!(
            "records {} metadata blocks, a pool has at most {MAX_METADATA_BLOCKS}",
            sb.metadata_nr_blocks
        ));
    }
    out
}

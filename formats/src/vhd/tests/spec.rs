//! Images built byte by byte from the VHD specification's layout (not by rustbk's own
//! writer): a dynamic base and a differencing child with a partial sector bitmap, and
//! parent locators that escape the allowed folders.

use std::path::Path;

use crate::confine::BackingPolicy;
use crate::error::Error;
use crate::image::Format;
use crate::open_image;
use crate::suite::assert_bytes;

use super::{opts, read_all, temp};

const BLOCK: usize = 4096;
const BLOCKS: usize = 16;
const SIZE: usize = BLOCK * BLOCKS;

fn sum(b: &[u8]) -> u32 {
    !b.iter().fold(0u32, |s, &x| s.wrapping_add(u32::from(x)))
}

/// A footer per the specification's table (checksum over the bytes with the field zero).
fn footer(disk_type: u32, id: u8) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&512u64.to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[40..48].copy_from_slice(&(SIZE as u64).to_be_bytes());
    f[48..56].copy_from_slice(&(SIZE as u64).to_be_bytes());
    f[56..60].copy_from_slice(&[0, 4, 4, 17]);
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].fill(id);
    let s = sum(&f);
    f[64..68].copy_from_slice(&s.to_be_bytes());
    f
}

/// A dynamic header with a BAT at 1536 and `locators` as (code, data offset, data).
fn header(parent: Option<u8>, locators: &[(&[u8; 4], u64, usize)]) -> Vec<u8> {
    let mut h = vec![0u8; 1024];
    h[..8].copy_from_slice(b"cxsparse");
    h[8..16].fill(0xff);
    h[16..24].copy_from_slice(&1536u64.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&(BLOCKS as u32).to_be_bytes());
    h[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
    if let Some(id) = parent {
        h[40..56].fill(id);
    }
    for (i, (code, offset, len)) in locators.iter().enumerate() {
        let at = 576 + i * 24;
        h[at..at + 4].copy_from_slice(*code);
        h[at + 4..at + 8].copy_from_slice(&512u32.to_be_bytes());
        h[at + 8..at + 12].copy_from_slice(&(*len as u32).to_be_bytes());
        h[at + 16..at + 24].copy_from_slice(&offset.to_be_bytes());
    }
    let s = sum(&h);
    h[36..40].copy_from_slice(&s.to_be_bytes());
    h
}

/// A file: footer copy, header, BAT, locator data at 2048, blocks from 2560, footer.
fn build(path: &Path, foot: &[u8], head: &[u8], locator: &[u8], blocks: &[(usize, u8, u8)]) {
    let mut file = Vec::new();
    file.extend_from_slice(foot);
    file.extend_from_slice(head);
    let mut bat = vec![0xffu8; 512];
    let mut data = Vec::new();
    for (i, &(block, bits, fill)) in blocks.iter().enumerate() {
        let sector = (2560 + i * (512 + BLOCK)) / 512;
        bat[block * 4..block * 4 + 4].copy_from_slice(&(sector as u32).to_be_bytes());
        let mut bitmap = vec![0u8; 512];
        bitmap[0] = bits;
        data.extend_from_slice(&bitmap);
        data.extend((0..BLOCK).map(|j| fill ^ (j % 251) as u8));
    }
    file.extend_from_slice(&bat);
    let mut loc = locator.to_vec();
    loc.resize(512, 0);
    file.extend_from_slice(&loc);
    file.extend_from_slice(&data);
    file.extend_from_slice(foot);
    std::fs::write(path, file).expect("write image");
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn block_bytes(fill: u8) -> Vec<u8> {
    (0..BLOCK).map(|j| fill ^ (j % 251) as u8).collect()
}

/// Base: blocks 1 and 2 (all sectors here). Child: block 1 with sectors 2 and 3 here,
/// block 3 whole, block 5 allocated with no sector here.
fn make_chain(base: &Path, child: &Path, name: &str) -> Vec<u8> {
    let loc = utf16le(name);
    build(
        base,
        &footer(3, 0xb0),
        &header(None, &[]),
        &[],
        &[(1, 0xff, 0x11), (2, 0xff, 0x22)],
    );
    let head = header(Some(0xb0), &[(b"W2ru", 2048, loc.len())]);
    build(
        child,
        &footer(4, 0xc0),
        &head,
        &loc,
        &[(1, 0b0011_0000, 0x33), (3, 0xff, 0x44), (5, 0, 0x55)],
    );
    let mut expected = vec![0u8; SIZE];
    expected[BLOCK..2 * BLOCK].copy_from_slice(&block_bytes(0x11));
    expected[2 * BLOCK..3 * BLOCK].copy_from_slice(&block_bytes(0x22));
    expected[BLOCK + 1024..BLOCK + 2048].copy_from_slice(&block_bytes(0x33)[1024..2048]);
    expected[3 * BLOCK..4 * BLOCK].copy_from_slice(&block_bytes(0x44));
    expected
}

#[test]
fn a_differencing_chain_built_from_the_specification_reads_by_its_sector_bitmaps() {
    let (dir, base) = temp("base.vhd");
    let child = dir.path().join("child.vhd");
    let expected = make_chain(&base, &child, ".\\base.vhd");
    let image = open_image(&child, Format::Vpc, &opts(true)).expect("open child");
    assert_eq!(image.geometry().size, SIZE as u64);
    let mut q = image.open_queue(4).expect("queue");
    for chunk in [SIZE, 1536, 700] {
        assert_bytes(&read_all(&mut *q, SIZE as u64, chunk), &expected, "chain");
    }
}

#[test]
fn a_parent_locator_escaping_the_allowed_folders_is_refused() {
    let (dir, _) = temp("x");
    std::fs::create_dir(dir.path().join("a")).expect("a");
    std::fs::create_dir(dir.path().join("b")).expect("b");
    let base = dir.path().join("b/base.vhd");
    let child = dir.path().join("a/child.vhd");
    let expected = make_chain(&base, &child, "..\\b\\base.vhd");
    match open_image(&child, Format::Vpc, &opts(true)) {
        Err(Error::BackingRefused { why, .. }) => assert!(why.contains("outside"), "{why}"),
        other => panic!("escaping parent not refused: {:?}", other.err()),
    }
    let allowed = crate::OpenOptions {
        backing: BackingPolicy::Confined(vec![dir.path().to_owned()]),
        ..opts(true)
    };
    let image = open_image(&child, Format::Vpc, &allowed).expect("allowed folder");
    let mut q = image.open_queue(4).expect("queue");
    assert_bytes(
        &read_all(&mut *q, SIZE as u64, SIZE),
        &expected,
        "allowed chain",
    );
}

#[test]
fn a_parent_whose_unique_id_differs_is_refused() {
    let (dir, base) = temp("base.vhd");
    let child = dir.path().join("child.vhd");
    make_chain(&base, &child, "base.vhd");
    build(&base, &footer(3, 0xee), &header(None, &[]), &[], &[]);
    match open_image(&child, Format::Vpc, &opts(true)) {
        Err(Error::BackingChain(why)) => assert!(why.contains("unique id"), "{why}"),
        other => panic!("replaced parent not refused: {:?}", other.err()),
    }
}

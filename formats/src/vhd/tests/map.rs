//! The map of a differencing chain: sector bitmaps decide which level answers.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::image::IoOp;
use crate::qcow2::map::MapEntry;
use crate::suite::{pattern, run, write_at};
use crate::vhd::map::map_file;
use crate::vhd::{VhdCreateOptions, create};

use super::{open, temp};

const SIZE: u64 = 4 << 20;
const BLOCK: u32 = 64 << 10;

fn write(path: &Path, writes: &[(u64, usize)]) {
    let image = open(path, false);
    let mut q = image.open_queue(4).expect("queue");
    for (i, &(off, len)) in writes.iter().enumerate() {
        write_at(&mut *q, off, &pattern(i as u64 + 7, len)).expect("write");
    }
    run(&mut *q, IoOp::Flush).expect("flush");
}

/// File offset of the data of block `index` (BAT at 1536, one bitmap sector per block).
fn data_of(path: &Path, index: u64) -> u64 {
    let mut e = [0u8; 4];
    let f = std::fs::File::open(path).expect("open");
    f.read_exact_at(&mut e, 1536 + index * 4).expect("read BAT");
    u64::from(u32::from_be_bytes(e)) * 512 + 512
}

fn row(e: &MapEntry) -> (u64, u64, u32, bool, bool, bool, Option<u64>) {
    (
        e.start, e.length, e.depth, e.present, e.zero, e.data, e.offset,
    )
}

#[test]
fn a_differencing_chain_maps_each_sector_to_the_level_its_bitmap_names() {
    let (dir, base) = temp("base.vhd");
    let opts = VhdCreateOptions {
        block_size: BLOCK,
        ..Default::default()
    };
    create(&base, SIZE, &opts).expect("base");
    write(&base, &[(0, 65536)]);
    let child = dir.path().join("child.vhd");
    let child_opts = VhdCreateOptions {
        parent: Some("base.vhd".into()),
        ..opts
    };
    create(&child, 0, &child_opts).expect("child");
    write(&child, &[(8192, 4096), (1 << 20, 4096)]);
    let (b0, c0, c16) = (data_of(&base, 0), data_of(&child, 0), data_of(&child, 16));
    let got: Vec<_> = map_file(&child, false)
        .expect("map")
        .iter()
        .map(row)
        .collect();
    let want = vec![
        (0, 8192, 1, true, false, true, Some(b0)),
        (8192, 4096, 0, true, false, true, Some(c0 + 8192)),
        (12288, 65536 - 12288, 1, true, false, true, Some(b0 + 12288)),
        (65536, (1 << 20) - 65536, 1, true, true, false, None),
        (1 << 20, 4096, 0, true, false, true, Some(c16)),
        (
            (1 << 20) + 4096,
            SIZE - (1 << 20) - 4096,
            1,
            true,
            true,
            false,
            None,
        ),
    ];
    assert_eq!(got, want);
    let top: Vec<_> = map_file(&base, false)
        .expect("map")
        .iter()
        .map(row)
        .collect();
    assert_eq!(
        top,
        vec![
            (0, 65536, 0, true, false, true, Some(b0)),
            (65536, SIZE - 65536, 0, true, true, false, None),
        ]
    );
}

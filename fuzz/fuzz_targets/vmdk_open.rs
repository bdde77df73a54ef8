//! Fuzzes opening a hostile VMDK: the input goes through the descriptor and sparse extent
//! header parsers, then becomes a file opened read-only as a VMDK (embedded or separate
//! descriptor, extent lines, grain directories and tables, compressed grains, parent names),
//! then read at offsets the input chooses. Nothing may panic, and memory stays bounded by the
//! parsers' caps and the grain table cache.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustbk_formats::vmdk::descriptor::Descriptor;
use rustbk_formats::vmdk::header::SparseHeader;
use rustbk_formats::{EngineKind, Format, ImageQueue, IoOp, OpenOptions, SharedBuf, open_image};

/// Largest read issued.
const MAX_READ: u64 = 256 << 10;

/// One private folder per fuzzing process; the image file is rewritten for every input.
fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rustbk-fuzz-vmdk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz work folder");
        dir.join("image.vmdk")
    })
}

fn opts() -> OpenOptions {
    OpenOptions {
        read_only: true,
        cache: rustbk_formats::CacheMode::Writeback,
        engine: EngineKind::Sync,
        // Any header size: the checks after the size check are what is fuzzed.
        require_whole_sectors: false,
        ..OpenOptions::default()
    }
}

/// Read ranges derived from the input's last bytes (and its start, offset 0).
fn ranges(data: &[u8], size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, size.min(4096))];
    for chunk in data.rchunks_exact(8).take(4) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if size == 0 {
            break;
        }
        let offset = (v % size) & !511;
        let len = (((v >> 48) % (MAX_READ / 512)) + 1) * 512;
        out.push((offset, len.min(size - offset)));
    }
    out
}

fn read(q: &mut dyn ImageQueue, offset: u64, len: u64) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if len == 0 {
        return;
    }
    let op = IoOp::Read {
        offset,
        bufs: Box::new(SharedBuf::new(len)),
    };
    if q.submit(op, 1).is_err() || q.commit().is_err() {
        return;
    }
    let mut done = Vec::new();
    for _ in 0..100 {
        if q.wait(Some(Duration::from_millis(100))).is_err() {
            return;
        }
        if q.reap(&mut done) > 0 {
            return;
        }
    }
    panic!("read of {len} bytes at {offset} never completed");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data) {
        let _ = (d.check_supported(), d.size(), Descriptor::parse(d.to_text().as_bytes()));
    }
    let _ = SparseHeader::parse(data);
    let path = image_path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(image) = open_image(path, Format::Vmdk, &opts()) else {
        return;
    };
    let size = image.geometry().size;
    let Ok(mut q) = image.open_queue(4) else {
        return;
    };
    for (offset, len) in ranges(data, size) {
        read(&mut *q, offset, len);
    }
});

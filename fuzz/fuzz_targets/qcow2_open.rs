//! Fuzzes opening a hostile image file: the input becomes a file that is opened read-only with
//! the format probed as the image tool does (qcow2 headers, L1/L2 tables, refcounts, backing names, compressed
//! clusters), then read at offsets the input chooses. Nothing may panic, and memory stays
//! bounded by the caches and the caps of the header parser.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustbk_formats::qcow2::{CacheSizes, Qcow2Options};
use rustbk_formats::{EngineKind, ImageQueue, IoOp, OpenOptions, SharedBuf, open_image};

/// Largest read issued.
const MAX_READ: u64 = 256 << 10;

/// One private folder per fuzzing process; the image file is rewritten for every input.
fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rustbk-fuzz-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz work folder");
        dir.join("image")
    })
}

fn opts() -> OpenOptions {
    OpenOptions {
        read_only: true,
        cache: rustbk_formats::CacheMode::Writeback,
        engine: EngineKind::Sync,
        // Any header size: the checks after the size check are what is fuzzed.
        require_whole_sectors: false,
        qcow2: Qcow2Options {
            cache: CacheSizes {
                l2_bytes: 1 << 20,
                refcount_bytes: 1 << 20,
            },
            ..Qcow2Options::default()
        },
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
    let path = image_path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(format) = rustbk_formats::probe_format(path) else {
        return;
    };
    let Ok(image) = open_image(path, format, &opts()) else {
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

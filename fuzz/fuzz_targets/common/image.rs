//! What the image-opening targets share: the input written to a file of the fuzzing process,
//! opened read-only on the synchronous engine, and read at offsets taken from the input.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rustbk_formats::{CacheMode, EngineKind, Format, ImageQueue, IoOp, OpenOptions, SharedBuf};

/// Largest read issued.
pub const MAX_READ: u64 = 256 << 10;

/// The image file of this fuzzing process (`name` in a private folder tagged `tag`); it is
/// rewritten for every input.
pub fn image_path(tag: &str, name: &str) -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rustbk-fuzz-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz work folder");
        dir.join(name)
    })
}

/// Read-only, page cache, synchronous engine, any header size.
pub fn read_only_opts() -> OpenOptions {
    OpenOptions {
        read_only: true,
        cache: CacheMode::Writeback,
        engine: EngineKind::Sync,
        // Any header size: the checks after the size check are what is fuzzed.
        require_whole_sectors: false,
        ..OpenOptions::default()
    }
}

/// Offset 0, then one read per 8-byte word of `words` (at most four): offset and length
/// taken from the word, whole sectors if `sectors`.
pub fn ranges<'a>(
    words: impl Iterator<Item = &'a [u8]>,
    size: u64,
    sectors: bool,
) -> Vec<(u64, u64)> {
    let mut out = vec![(0, size.min(4096))];
    if size == 0 {
        return out;
    }
    for chunk in words.take(4) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let (offset, len) = match sectors {
            true => (
                (v % size) & !511,
                (((v >> 48) % (MAX_READ / 512)) + 1) * 512,
            ),
            false => (v % size, ((v >> 48) % MAX_READ) + 1),
        };
        out.push((offset, len.min(size - offset)));
    }
    out
}

/// Writes `data` to `path`, opens it as `format` with `opts` and reads it at `ranges(size)`.
/// Any error ends the input quietly; a read that never completes panics.
pub fn open_and_read(
    path: &PathBuf,
    data: &[u8],
    format: impl FnOnce() -> Option<Format>,
    opts: &OpenOptions,
    ranges: impl FnOnce(u64) -> Vec<(u64, u64)>,
) {
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Some(format) = format() else {
        return;
    };
    let Ok(image) = rustbk_formats::open_image(path, format, opts) else {
        return;
    };
    let Ok(mut q) = image.open_queue(4) else {
        return;
    };
    for (offset, len) in ranges(image.geometry().size) {
        read(&mut *q, offset, len);
    }
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

//! Fuzzes opening a hostile image file: the input becomes a file that is opened read-only with
//! the format probed as the image tool does (qcow2 headers, L1/L2 tables, refcounts, backing names, compressed
//! clusters), then read at offsets the input chooses. Nothing may panic, and memory stays
//! bounded by the caches and the caps of the header parser.

#![no_main]

#[path = "common/image.rs"]
mod image;

use libfuzzer_sys::fuzz_target;
use rustbk_formats::qcow2::{CacheSizes, Qcow2Options};

fuzz_target!(|data: &[u8]| {
    let path = image::image_path("qcow2", "image");
    let opts = rustbk_formats::OpenOptions {
        qcow2: Qcow2Options {
            cache: CacheSizes {
                l2_bytes: 1 << 20,
                refcount_bytes: 1 << 20,
            },
            ..Qcow2Options::default()
        },
        ..image::read_only_opts()
    };
    let format = || rustbk_formats::probe_format(path).ok();
    // Offsets and lengths from the input's last bytes.
    let ranges = |size| image::ranges(data.rchunks_exact(8), size, true);
    image::open_and_read(path, data, format, &opts, ranges);
});

//! Fuzzes opening a hostile VHD file: the input becomes a file that is opened read-only as a
//! VHD (footer and its copy, dynamic header, BAT, batmap and locator extents, parent locators,
//! sector bitmaps), then read at offsets the input chooses; the same file is then checked
//! read-only by the image checker (`rustbk_formats::vhd::check`). Nothing may panic, and
//! memory stays bounded by the BAT cap, the bitmap cache and the checker's message cap.

#![no_main]

#[path = "common/image.rs"]
mod image;

use libfuzzer_sys::fuzz_target;
use rustbk_formats::Format;

fuzz_target!(|data: &[u8]| {
    let path = image::image_path("vhd", "image.vhd");
    // Offsets and lengths from the input's bytes after the footer copy at offset 0.
    let words = data.get(512..).unwrap_or_default().chunks_exact(8);
    let ranges = |size| image::ranges(words, size, false);
    let opts = image::read_only_opts();
    image::open_and_read(path, data, || Some(Format::Vpc), &opts, ranges);
    let check = rustbk_formats::vhd::check::VhdCheckOptions::default();
    if let Ok(report) = rustbk_formats::vhd::check::check(path, &check) {
        assert!(report.findings.len() <= 10_000, "findings are capped");
    }
});

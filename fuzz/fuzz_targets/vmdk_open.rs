//! Fuzzes opening a hostile VMDK: the input goes through the descriptor and sparse extent
//! header parsers, then becomes a file opened read-only as a VMDK (embedded or separate
//! descriptor, extent lines, grain directories and tables, compressed grains, parent names),
//! then read at offsets the input chooses. Nothing may panic, and memory stays bounded by the
//! parsers' caps and the grain table cache.

#![no_main]

#[path = "common/image.rs"]
mod image;

use libfuzzer_sys::fuzz_target;
use rustbk_formats::Format;
use rustbk_formats::vmdk::descriptor::Descriptor;
use rustbk_formats::vmdk::header::SparseHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data) {
        let _ = (
            d.check_supported(),
            d.size(),
            Descriptor::parse(d.to_text().as_bytes()),
        );
    }
    let _ = SparseHeader::parse(data);
    let path = image::image_path("vmdk", "image.vmdk");
    // Offsets and lengths from the input's last bytes.
    let ranges = |size| image::ranges(data.rchunks_exact(8), size, true);
    let opts = image::read_only_opts();
    image::open_and_read(path, data, || Some(Format::Vmdk), &opts, ranges);
});

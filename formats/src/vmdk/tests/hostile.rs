//! Hostile and damaged VMDK images: each is refused with a clear error, with bounded memory
//! and without a panic; a damaged grain table fails only the reads that use it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::image::{BlockImage, Format, OpenOptions};
use crate::suite::read_at;
use crate::vmdk::create::{self, Subformat};
use crate::vmdk::descriptor::{Descriptor, MAX_DESCRIPTOR, MAX_EXTENTS};

use super::{open, open_err, tmp};

fn sparse(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("h.vmdk");
    create::create(&path, 4 << 20, Subformat::MonolithicSparse, None).expect("create");
    path
}

fn poke(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, at).expect("poke");
}

fn peek32(path: &Path, at: u64) -> u32 {
    let raw = std::fs::read(path).expect("read");
    let at = at as usize;
    u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"))
}

fn invalid(result: Result<std::sync::Arc<dyn BlockImage>, Error>, words: &str) {
    match result {
        Err(Error::InvalidImage(m)) => assert!(m.contains(words), "{m:?} should say {words:?}"),
        Err(e) => panic!("expected an invalid-image error saying {words:?}, got {e}"),
        Ok(_) => panic!("a hostile image opened (expected {words:?})"),
    }
}

/// The grain directory's sector (header offset 56).
fn gd_sector(path: &Path) -> u64 {
    u64::from(peek32(path, 56))
}

#[test]
fn a_grain_directory_past_the_end_of_the_file_is_refused() {
    let dir = tmp();
    let path = sparse(&dir);
    poke(&path, 56, &(1u64 << 30).to_le_bytes());
    invalid(open(&path), "past the end of the file");
}

#[test]
fn a_grain_table_shared_by_two_directory_entries_is_refused() {
    let dir = tmp();
    let path = sparse(&dir);
    // 4 MiB with 64 KiB grains and 512 entries per table: one table; make the redundant
    // directory point at the primary table (a table reached twice).
    let gd = gd_sector(&path);
    let table = peek32(&path, gd * 512);
    let rgd = u64::from(peek32(&path, 48));
    poke(&path, rgd * 512, &table.to_le_bytes());
    invalid(open(&path), "overlaps");
}

#[test]
fn a_grain_table_inside_the_header_or_descriptor_is_refused() {
    let dir = tmp();
    let path = sparse(&dir);
    let gd = gd_sector(&path);
    poke(&path, gd * 512, &2u32.to_le_bytes());
    invalid(open(&path), "overlaps");
}

#[test]
fn a_grain_table_entry_pointing_into_metadata_fails_the_read_with_a_clear_error() {
    let dir = tmp();
    let path = sparse(&dir);
    let table = u64::from(peek32(&path, gd_sector(&path) * 512));
    poke(&path, table * 512, &gd_sector(&path).to_le_bytes()[..4]);
    let image = open(&path).expect("the directories are sound");
    let mut q = image.open_queue(4).expect("queue");
    let err = read_at(&mut *q, 0, 4096).expect_err("grain 0 points at the directory");
    assert!(err.to_string().contains("points into metadata"), "{err}");
    read_at(&mut *q, 65536, 4096).expect("other grains still read");
    drop((q, image));
    poke(&path, table * 512 + 4, &0x00ff_ffffu32.to_le_bytes());
    let image = open(&path).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    let err = read_at(&mut *q, 65536, 512).expect_err("grain 1 is past the end");
    assert!(err.to_string().contains("past the end"), "{err}");
}

/// Opens `path` as `open_as` does, keeping the image's type (for its files).
fn open_vmdk(path: &Path) -> crate::vmdk::VmdkImage {
    let opts = OpenOptions::default();
    let mut file = crate::open_file(path, &opts).expect("file");
    crate::vmdk::keep_metadata_pages_apart(&mut file);
    let mut chain = crate::qcow2::Chain::default();
    crate::vmdk::VmdkImage::open(std::sync::Arc::new(file), &opts, &mut chain).expect("open")
}

#[test]
fn a_grain_off_the_page_grid_goes_through_the_page_cache_and_whole_pages_go_direct() {
    use crate::suite::{pattern, write_at};
    let dir = tmp();
    let path = sparse(&dir);
    // Grain 0 at one sector past a page boundary, past the end of the file: its pages are
    // shared with whatever lies around it.
    let len = std::fs::metadata(&path).expect("stat").len();
    let sector = len.div_ceil(4096) * 8 + 1;
    let f = (std::fs::OpenOptions::new().read(true).write(true))
        .open(&path)
        .expect("open");
    f.set_len(sector * 512 + 65536 + 4096).expect("grow");
    let table = u64::from(peek32(&path, gd_sector(&path) * 512));
    poke(&path, table * 512, &(sector as u32).to_le_bytes());
    let image = open_vmdk(&path);
    let file = image.files()[0].clone();
    let mut q = image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(1, 4096)).expect("write grain 0");
    let before = file.stats().buffered_fallbacks;
    assert!(
        before >= 1,
        "the write into grain 0 is not page aligned in the file"
    );
    assert_eq!(read_at(&mut *q, 0, 4096).expect("read"), pattern(1, 4096));
    let on_disk = {
        let mut b = vec![0; 4096];
        f.read_exact_at(&mut b, sector * 512)
            .expect("read the file");
        b
    };
    assert_eq!(on_disk, pattern(1, 4096), "grain 0 is where its entry says");
    // Grain 1 is allocated on the grid: its whole-page ops take O_DIRECT where the file has it.
    write_at(&mut *q, 65536, &pattern(2, 65536)).expect("write grain 1");
    assert_eq!(
        read_at(&mut *q, 65536, 65536).expect("read"),
        pattern(2, 65536)
    );
    if file.dio_align().is_some() {
        assert_eq!(file.dio_align().map(|a| a.offset), Some(4096));
        let after = file.stats().buffered_fallbacks;
        assert!(
            after <= before + 1,
            "whole pages went direct: {before} -> {after}"
        );
    }
}

#[test]
fn bad_magic_version_grain_size_and_capacity_are_refused_by_name() {
    let dir = tmp();
    let path = sparse(&dir);
    poke(&path, 4, &9u32.to_le_bytes());
    let err = open_err(&path, "version 9");
    assert!(
        matches!(&err, Error::UnsupportedFeature(m) if m.contains("version 9")),
        "{err}"
    );
    poke(&path, 4, &1u32.to_le_bytes());
    poke(&path, 20, &7u64.to_le_bytes());
    invalid(open(&path), "grain of 7 sectors");
    poke(&path, 20, &128u64.to_le_bytes());
    poke(&path, 12, &(1u64 << 50).to_le_bytes());
    invalid(open(&path), "grain directory of");
    let raw = dir.path().join("raw.vmdk");
    std::fs::write(&raw, vec![0x55u8; 4096]).expect("write");
    invalid(open(&raw), "neither a sparse extent");
}

fn descriptor_file(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("d.vmdk");
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{body}"
    );
    std::fs::write(&path, text).expect("descriptor");
    path
}

#[test]
fn extent_paths_escaping_the_image_folder_are_refused() {
    let outer = tmp();
    let dir = tempfile::Builder::new()
        .tempdir_in(outer.path())
        .expect("inner");
    std::fs::write(outer.path().join("secret.raw"), vec![7u8; 1 << 20]).expect("secret");
    for name in ["../secret.raw", "/etc/passwd", "nbd:host:10809"] {
        let path = descriptor_file(&dir, &format!("RW 2048 FLAT \"{name}\" 0\n"));
        let err = open_err(&path, name);
        assert!(matches!(err, Error::BackingRefused { .. }), "{name}: {err}");
    }
    std::os::unix::fs::symlink(outer.path().join("secret.raw"), dir.path().join("link.raw"))
        .expect("symlink");
    let path = descriptor_file(&dir, "RW 2048 FLAT \"link.raw\" 0\n");
    let err = open_err(&path, "a symlink out of the folder");
    assert!(matches!(err, Error::BackingRefused { .. }), "{err}");
    let follow = OpenOptions {
        backing: crate::BackingPolicy::Follow,
        ..OpenOptions::default()
    };
    crate::open_image(&path, Format::Vmdk, &follow).expect("the image tool follows it");
}

#[test]
fn a_parent_hint_escaping_the_image_folder_is_refused() {
    let outer = tmp();
    let dir = tempfile::Builder::new()
        .tempdir_in(outer.path())
        .expect("inner");
    create::create(
        &outer.path().join("p.vmdk"),
        1 << 20,
        Subformat::MonolithicSparse,
        None,
    )
    .expect("parent");
    let cid = create::describe(&outer.path().join("p.vmdk"))
        .expect("parent")
        .cid;
    let hint = create::Parent {
        hint: "../p.vmdk".to_owned(),
        cid,
    };
    let path = dir.path().join("c.vmdk");
    create::create(&path, 1 << 20, Subformat::MonolithicSparse, Some(&hint)).expect("child");
    let err = open_err(&path, "parent outside");
    assert!(matches!(err, Error::BackingRefused { .. }), "{err}");
}

#[test]
fn a_parent_loop_is_refused() {
    let dir = tmp();
    let path = dir.path().join("self.vmdk");
    create::create(&path, 1 << 20, Subformat::MonolithicSparse, None).expect("create");
    let d = create::describe(&path).expect("describe");
    std::fs::remove_file(&path).expect("rm");
    let me = create::Parent {
        hint: "self.vmdk".to_owned(),
        cid: d.cid,
    };
    create::create(&path, 1 << 20, Subformat::MonolithicSparse, Some(&me)).expect("create");
    let cid = create::describe(&path).expect("describe").cid;
    // Point the parentCID at its own CID so only the loop check can stop it.
    let raw = std::fs::read(&path).expect("read");
    let text = String::from_utf8_lossy(&raw[512..512 * 21]).into_owned();
    let old = format!("parentCID={:08x}", d.cid);
    let fixed = text.replace(&old, &format!("parentCID={cid:08x}"));
    poke(&path, 512, fixed.as_bytes());
    let err = open_err(&path, "loop");
    assert!(
        matches!(err, Error::BackingChain(ref m) if m.contains("loop")),
        "{err}"
    );
}

#[test]
fn oversize_descriptors_and_huge_extent_counts_are_refused() {
    let dir = tmp();
    let mut body = String::from("# Disk DescriptorFile\n");
    while body.len() <= MAX_DESCRIPTOR {
        body.push_str("# padding padding padding padding padding padding\n");
    }
    let path = dir.path().join("big.vmdk");
    std::fs::write(&path, &body).expect("write");
    invalid(open(&path), "too large for a descriptor");
    let many: String = (0..=MAX_EXTENTS).map(|_| "RW 1 ZERO\n").collect();
    let text = format!("createType=\"monolithicFlat\"\n{many}");
    let err = Descriptor::parse(text.as_bytes()).expect_err("too many extents");
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn an_extent_whose_byte_size_overflows_is_refused_without_a_panic() {
    let dir = tmp();
    // 2^55 sectors are 2^64 bytes: the sector count parses, its byte size does not fit.
    for body in [
        "RW 36028797018963968 ZERO\n",
        "RW 8 ZERO\nRW 36028797018963967 ZERO\n",
    ] {
        let path = descriptor_file(&dir, body);
        invalid(open(&path), "overflows");
    }
}

#[test]
fn a_flat_extent_whose_file_range_overflows_is_refused_at_open() {
    let dir = tmp();
    std::fs::write(dir.path().join("data.raw"), vec![0xabu8; 8192]).expect("data");
    // Offsets in sectors: the first ends past the largest file offset, the second's end
    // does not fit in 64 bits (a read at guest byte 512 computed offset 2^64).
    for offset in [(1u64 << 54) - 1, (1 << 55) - 1] {
        let path = descriptor_file(&dir, &format!("RW 16 FLAT \"data.raw\" {offset}\n"));
        invalid(open(&path), "largest file offset");
    }
    let path = descriptor_file(&dir, "RW 16 FLAT \"data.raw\" 2\n");
    let image = open(&path).expect("a flat extent inside the file opens");
    let mut q = image.open_queue(1).expect("queue");
    let got = read_at(&mut *q, 512, 4096).expect("read");
    assert_eq!(got, vec![0xab; 4096]);
}

#[test]
fn a_sparse_extent_file_listed_twice_is_refused() {
    let dir = tmp();
    let path = sparse(&dir);
    // Two extent lines naming the sparse file itself: each line would get its own view of
    // one file's tables and free space (a grain written through one line would be allocated
    // where the other allocates too), and its own copy of the directory and table cache.
    let raw = std::fs::read(&path).expect("read");
    let room = &raw[512..512 * 21];
    let end = room.iter().position(|&b| b == 0).unwrap_or(room.len());
    let text = String::from_utf8_lossy(&room[..end]).into_owned();
    let line = "RW 8192 SPARSE \"h.vmdk\"";
    assert!(text.contains(line), "{text}");
    let twice = "RW 4096 SPARSE \"h.vmdk\"\nRW 4096 SPARSE \"h.vmdk\"";
    poke(&path, 512, text.replace(line, twice).as_bytes());
    invalid(open(&path), "more than one extent");
    // A FLAT extent over the sparse file (its metadata as guest data) is refused too.
    let flat = "RW 4096 SPARSE \"h.vmdk\"\nRW 4096 FLAT \"h.vmdk\" 0";
    poke(&path, 512, text.replace(line, flat).as_bytes());
    invalid(open(&path), "more than one extent");
}

#[test]
fn descriptor_parser_takes_qemu_text_and_refuses_what_it_does_not_know() {
    let text = "# Disk DescriptorFile\nversion=1\nCID=52b1a4c3\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n\
        RW 4192256 FLAT \"a-f001.vmdk\" 0\nRDONLY 2048 FLAT \"a b.vmdk\" 16\nRW 8 ZERO\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";
    let d = Descriptor::parse(text.as_bytes()).expect("parse");
    assert_eq!((d.cid, d.parent_cid), (0x52b1_a4c3, 0xffff_ffff));
    assert_eq!(d.extents.len(), 3);
    assert_eq!(d.extents[1].file.as_deref(), Some("a b.vmdk"));
    assert_eq!((d.extents[1].offset, d.extents[1].writable), (16, false));
    assert_eq!(d.size().expect("size"), (4_192_256 + 2048 + 8) * 512);
    assert_eq!(
        Descriptor::parse(d.to_text().as_bytes())
            .expect("again")
            .extents,
        d.extents
    );
    let refuse = |t: &str| Descriptor::parse(t.as_bytes()).err().map(|e| e.to_string());
    for sub in ["vmfs", "vmfsSparse", "seSparse", "fullDevice"] {
        let t = format!("createType=\"{sub}\"\nRW 8 ZERO\n");
        let d = Descriptor::parse(t.as_bytes()).expect("parses");
        let err = d.check_supported().expect_err(sub).to_string();
        assert!(err.contains(sub), "{err}");
    }
    assert!(
        refuse("createType=\"monolithicFlat\"\nRW 8 VMFS \"x\"\n")
            .is_some_and(|e| e.contains("VMFS"))
    );
    assert!(
        refuse("createType=\"monolithicFlat\"\nRW 8 FLAT x.vmdk 0\n")
            .is_some_and(|e| e.contains("not quoted"))
    );
    assert!(
        refuse("createType=\"monolithicFlat\"\nRW 8 FLAT \"x.vmdk\n")
            .is_some_and(|e| e.contains("unterminated"))
    );
    assert!(
        refuse("createType=\"monolithicFlat\"\nRW 8 SPARSE \"x\" 5\n")
            .is_some_and(|e| e.contains("after"))
    );
    assert!(refuse("createType=\"monolithicFlat\"\nRW 99999999999999999999 ZERO\n").is_some());
    assert!(refuse("createType=\"monolithicFlat\"\n").is_some_and(|e| e.contains("no extents")));
    assert!(refuse("RW 8 ZERO\n").is_some_and(|e| e.contains("no createType")));
    assert!(
        refuse("createType=\"monolithicFlat\"\nCID=xyz\nRW 8 ZERO\n")
            .is_some_and(|e| e.contains("hexadecimal"))
    );
    let long = format!(
        "createType=\"monolithicFlat\"\nRW 8 FLAT \"{}\" 0\n",
        "a".repeat(5000)
    );
    assert!(refuse(&long).is_some_and(|e| e.contains("at most")));
    let huge = "createType=\"monolithicFlat\"\nRW 18446744073709551615 ZERO\nRW 8 ZERO\n";
    let d = Descriptor::parse(huge.as_bytes()).expect("parses");
    assert!(d.size().is_err(), "sizes that overflow are refused");
}

#[test]
fn a_flipped_byte_anywhere_in_the_metadata_never_panics() {
    let dir = tmp();
    let path = sparse(&dir);
    let pristine = std::fs::read(&path).expect("read");
    let meta_end = 512 * 64;
    for at in (0..meta_end).step_by(61) {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0xa5;
        std::fs::write(&path, &bytes).expect("write");
        let opened = crate::open_image(
            &path,
            Format::Vmdk,
            &OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        );
        if let Ok(image) = opened {
            let mut q = image.open_queue(4).expect("queue");
            let _ = read_at(&mut *q, 0, 65536 * 2);
        }
    }
}

//! Header parsing and serialising tests.

use super::*;
use std::path::Path;

fn new_header(version: u32, backing: Option<(&'static [u8], Option<&'static str>)>) -> Vec<u8> {
    let mut b = serialize(&NewHeader {
        version,
        cluster_bits: 16,
        size: 1 << 30,
        l1: (2, 3 << 16),
        reftable: (1 << 16, 1),
        refcount_order: 4,
        backing,
    })
    .expect("serialize");
    b.resize(4 << 16, 0);
    b
}

#[test]
fn serialized_headers_parse_back_with_their_backing_file_and_format() {
    for version in [2, 3] {
        let b = new_header(version, Some((b"../base.img", Some("raw"))));
        let h = Header::parse(&b, b.len() as u64).expect("parse");
        assert_eq!(
            (h.version, h.cluster_bits, h.size, h.l1_size),
            (version, 16, 1 << 30, 2)
        );
        assert_eq!(h.backing_file, Some(PathBuf::from("../base.img")));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert_eq!(h.refcount_order, 4);
        assert_eq!(h.compression, Compression::Deflate);
    }
}

#[test]
fn feature_names_describe_incompatible_bits() {
    let mut b = new_header(3, None);
    let mut entry = vec![0u8, 9];
    entry.extend_from_slice(b"shiny feature");
    entry.resize(FEATURE_ENTRY_LEN, 0);
    let at = put_extension(&mut b, V3_HEADER_LEN as usize, EXT_FEATURE_TABLE, &entry).expect("ext");
    put_extension(&mut b, at, EXT_END, &[]).expect("end");
    let h = Header::parse(&b, b.len() as u64).expect("parse");
    assert_eq!(
        h.describe_incompatible(1 << 9 | 1 << 12),
        "bit 9 (shiny feature), bit 12"
    );
}

#[test]
fn extension_overrunning_the_cluster_and_a_short_l1_table_are_refused() {
    let mut b = new_header(3, None);
    put32(&mut b, V3_HEADER_LEN as usize, EXT_BACKING_FORMAT);
    put32(&mut b, V3_HEADER_LEN as usize + 4, 1 << 20);
    assert!(matches!(
        Header::parse(&b, b.len() as u64),
        Err(Error::InvalidImage(_))
    ));
    let mut b = new_header(3, None);
    put32(&mut b, 36, 1);
    let e = Header::parse(&b, b.len() as u64).expect_err("L1 too small");
    assert!(e.to_string().contains("too small"), "{e}");
}

#[test]
fn compression_type_must_match_its_feature_bit() {
    let mut b = new_header(3, None);
    b[104] = 1;
    assert!(matches!(
        Header::parse(&b, b.len() as u64),
        Err(Error::InvalidImage(_))
    ));
    put64(&mut b, 72, incompat::COMPRESSION);
    let h = Header::parse(&b, b.len() as u64).expect("zstd");
    assert_eq!(h.compression, Compression::Zstd);
    b[104] = 7;
    assert!(matches!(
        Header::parse(&b, b.len() as u64),
        Err(Error::UnsupportedFeature(_))
    ));
}

#[test]
fn a_new_backing_reference_keeps_the_other_extensions_and_zeroes_the_old_name() {
    let mut b = new_header(3, None);
    let mut entry = vec![0u8, 9];
    entry.extend_from_slice(b"shiny feature");
    entry.resize(FEATURE_ENTRY_LEN, 0);
    let at =
        put_extension(&mut b, V3_HEADER_LEN as usize, EXT_BACKING_FORMAT, b"raw").expect("ext");
    let at = put_extension(&mut b, at, EXT_FEATURE_TABLE, &entry).expect("ext");
    let at = put_extension(&mut b, at, EXT_END, &[]).expect("end");
    let long = b"a rather long name of an old backing file.raw";
    b[at..at + long.len()].copy_from_slice(long);
    put64(&mut b, 8, at as u64);
    put32(&mut b, 16, u32::try_from(long.len()).expect("short"));
    let old = Header::parse(&b, b.len() as u64).expect("parse");
    for (backing, format) in [(Some(&b"new.qcow2"[..]), Some("qcow2")), (None, None)] {
        let bytes = with_backing(&b, &old, backing.map(|n| (n, format))).expect("rewrite");
        let mut next = b.clone();
        next[..bytes.len()].copy_from_slice(&bytes);
        let h = Header::parse(&next, next.len() as u64).expect("parse");
        assert_eq!(
            h.backing_file.as_deref(),
            backing.map(|n| Path::new(OsStr::from_bytes(n)))
        );
        assert_eq!(h.backing_format.as_deref(), format);
        assert_eq!(
            h.feature_names, old.feature_names,
            "the feature table is kept"
        );
        let text = String::from_utf8_lossy(&next);
        assert!(!text.contains("old backing file"), "the old name is zeroed");
    }
    let too_long = vec![b'x'; 1024];
    assert!(with_backing(&b, &old, Some((&too_long, None))).is_err());
}

use super::*;

fn disk(params: &str) -> Result<Disk, String> {
    parse_params(params).map(|p| p.disk)
}

fn raw(p: &str) -> Result<Disk, String> {
    let path = PathBuf::from(p);
    Ok(Disk::Image {
        format: Format::Raw,
        path,
    })
}

#[test]
fn plain_params_are_raw_and_other_formats_need_a_prefix() {
    let ok = |format, p: &str| {
        let path = PathBuf::from(p);
        Ok(Disk::Image { format, path })
    };
    assert_eq!(disk("/a/b.img"), raw("/a/b.img"));
    assert_eq!(disk("/a/b.qcow2"), raw("/a/b.qcow2"));
    assert_eq!(disk("/a:b/c.img"), raw("/a:b/c.img"));
    assert_eq!(disk("raw:/a"), raw("/a"));
    assert_eq!(disk("aio:/a"), raw("/a"));
    assert_eq!(disk("qcow2:/b"), ok(Format::Qcow2, "/b"));
    assert_eq!(disk("qcow2:/b:c"), ok(Format::Qcow2, "/b:c"));
    assert_eq!(disk("vhd:/a.vhd"), ok(Format::Vpc, "/a.vhd"));
    assert_eq!(disk("vpc:/a.vhd"), ok(Format::Vpc, "/a.vhd"));
    assert_eq!(disk("vmdk:/v/d.vmdk"), ok(Format::Vmdk, "/v/d.vmdk"));
    assert!(disk("vmdk_nope:/a").is_err());
    assert!(disk("json:{}").is_err());
    assert!(disk("  ").is_err());
    assert!(disk("raw:").is_err());
}

#[test]
fn sector_size_option_follows_the_kind_of_any_disk() {
    let p = parse_params("raw,sector-size=4096:/srv/a.img").unwrap();
    assert_eq!(
        (p.disk, p.sector_size),
        (raw("/srv/a.img").unwrap(), Some(4096))
    );
    let p = parse_params("qcow2,sector-size=512:/b").unwrap();
    assert_eq!(p.sector_size, Some(512));
    assert!(matches!(
        p.disk,
        Disk::Image {
            format: Format::Qcow2,
            ..
        }
    ));
    let p = parse_params("null,sector-size=4096:64M").unwrap();
    assert_eq!(
        (p.disk, p.sector_size),
        (Disk::Null { size: 64 << 20 }, Some(4096))
    );
    let p = parse_params("thin,sector-size=4096:/srv/pool:vm1").unwrap();
    assert_eq!(p.sector_size, Some(4096));
    assert!(matches!(p.disk, Disk::Thin { ref volume, .. } if volume == "vm1"));
    for plain in ["/srv/a.img", "raw:/srv/a.img", "null:8G"] {
        assert_eq!(parse_params(plain).unwrap().sector_size, None, "{plain}");
    }
}

#[test]
fn bad_options_are_refused_with_their_reason() {
    let why = |p: &str| parse_params(p).expect_err(p);
    assert!(why("raw,sector-size=1024:/a").contains("512 or 4096"));
    assert!(why("raw,sector-size=8k:/a").contains("\"8k\""));
    assert_eq!(
        parse_params("raw,sector-size=4k:/a").unwrap().sector_size,
        Some(4096)
    );
    assert!(why("raw,sector-size=:/a").contains("512 or 4096"));
    assert!(why("raw,sector-size:/a").contains("no value"));
    assert!(why("raw,:/a").contains("no value"));
    assert!(why("raw,cache=none:/a").contains("unknown option \"cache\""));
    assert!(why("raw,sector-size=512,sector-size=4096:/a").contains("twice"));
    assert!(why(",sector-size=4096:/a").contains("unknown format prefix \"\""));
    assert!(why("tap2,sector-size=4096:/a").contains("unknown format prefix \"tap2\""));
    assert!(why("raw,sector-size=4096:").contains("no image path"));
    // Options belong to the prefix: after a slash, a comma is part of the path.
    assert_eq!(
        disk("/srv/raw,sector-size=4096:x"),
        raw("/srv/raw,sector-size=4096:x")
    );
}

#[test]
fn null_params_give_a_size_in_bytes_or_with_a_binary_suffix() {
    let null = |size: u64| Ok(Disk::Null { size });
    assert_eq!(disk("null:8G"), null(8 << 30));
    assert_eq!(disk("null:512m"), null(512 << 20));
    assert_eq!(disk("null:4k"), null(4096));
    assert_eq!(disk("null:2T"), null(2 << 40));
    assert_eq!(disk("null:1048576"), null(1 << 20));
    assert_eq!(disk(" null:1G\n"), null(1 << 30));
    for bad in [
        "null:",
        "null:G",
        "null:8X",
        "null:-1",
        "null:1.5G",
        "null:8 G",
        "null:/a",
        "null:99999999999T",
    ] {
        assert!(disk(bad).is_err(), "{bad}");
    }
    // A path with a colon after a slash stays a raw path, never a null disk.
    assert_eq!(disk("/srv/null:8G"), raw("/srv/null:8G"));
}

#[test]
fn thin_params_name_a_pool_directory_and_a_volume() {
    let thin = |pool: &str, volume: &str| {
        let (pool, volume) = (PathBuf::from(pool), volume.to_owned());
        Ok(Disk::Thin { pool, volume })
    };
    assert_eq!(disk("thin:/srv/pool:7"), thin("/srv/pool", "7"));
    assert_eq!(disk("thin:/a:b/pool:vm1"), thin("/a:b/pool", "vm1"));
    assert!(disk("thin:/srv/pool").is_err());
    assert!(disk("thin:/srv/pool:").is_err());
}

#[test]
fn a_tap_disks_aio_prefix_may_carry_rustbks_own_params() {
    let qcow2 = Disk::Image {
        format: Format::Qcow2,
        path: PathBuf::from("/srv/a.qcow2"),
    };
    assert_eq!(disk("aio:qcow2:/srv/a.qcow2"), Ok(qcow2));
    assert_eq!(disk("aio:/srv/a.img"), raw("/srv/a.img"));
    assert_eq!(disk("aio:raw:/srv/a.img"), raw("/srv/a.img"));
    assert_eq!(disk("aio:null:8G"), Ok(Disk::Null { size: 8 << 30 }));
    let p = parse_params("aio:raw,sector-size=4096:/srv/a.img").unwrap();
    assert_eq!(p.sector_size, Some(4096));
    assert!(
        matches!(disk("aio:thin:/srv/pool:vm1"), Ok(Disk::Thin { ref volume, .. }) if volume == "vm1")
    );
    // One level only, and tapdisk's other formats stay refused inside it too.
    assert_eq!(disk("aio:aio:/srv/a.img"), raw("/srv/a.img"));
    assert_eq!(
        disk("aio:aio:qcow2:/srv/a.qcow2"),
        raw("qcow2:/srv/a.qcow2")
    );
    let vhd = Disk::Image {
        format: Format::Vpc,
        path: PathBuf::from("/srv/a.vhd"),
    };
    assert_eq!(disk("aio:vhd:/srv/a.vhd"), Ok(vhd));
    assert!(disk("aio:qcow:/srv/a.qcow").unwrap_err().contains("qcow"));
    assert!(disk("qcow:/srv/a.qcow").unwrap_err().contains("qcow"));
}

//! The `rustbk thin` commands as an administrator runs them on a pool whose volume a guest
//! wrote through the backend: snapshot, list, check, dump and delete, each checked against
//! what the others and thin-provisioning-tools report; and `rustbk demo --thin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustbk_ring::{RwOp, status};
use rustbk_thin::dir::PoolDir;
use rustbk_thin::peers::{self, Peer};
use rustbk_thin::pool::PoolOptions;
use rustbk_thin::volume::{ThinVolume, VolumeOptions};

use crate::harness::{Host, Setup, pattern};
use crate::thin::thin_setup;

fn rustbk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(args)
        .output()
        .expect("run rustbk")
}

/// Runs `rustbk thin ARGS`, which must succeed; its standard output.
fn thin(args: &[&str]) -> String {
    let mut all = vec!["thin"];
    all.extend_from_slice(args);
    let out = rustbk(&all);
    assert!(out.status.success(), "rustbk thin {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A pool made with `rustbk thin create-pool` and volume "vm" made with `rustbk thin create`.
fn cli_pool(dir: &Path) -> PathBuf {
    let pool = dir.join("pool");
    let path = pool.to_str().expect("utf-8 path");
    thin(&["create-pool", path, "--size", "64m"]);
    thin(&["create", path, "--size", "16m", "--name", "vm"]);
    PathBuf::from(format!("{path}:vm"))
}

/// The volumes `thin list --output json` shows: name → mapped blocks.
fn listed(pool: &str) -> Vec<(String, u64)> {
    let list = json(&thin(&["list", pool, "--output", "json"]));
    let volumes = list["volumes"].as_array().expect("volumes");
    let field = |v: &serde_json::Value| v["mapped_blocks"].as_u64().expect("mapped_blocks");
    volumes
        .iter()
        .map(|v| (v["name"].as_str().expect("name").to_owned(), field(v)))
        .collect()
}

/// `thin check --output json` of a clean pool: its device and mapping counts.
fn clean_check(metadata: &str) -> (u64, u64) {
    let report = json(&thin(&["check", metadata, "--output", "json"]));
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    let totals = &report["totals"];
    assert_eq!(totals["data_blocks_leaked"], 0, "{report}");
    let count = |k: &str| totals[k].as_u64().expect("count");
    (count("devices"), count("mappings"))
}

#[test]
fn the_thin_commands_snapshot_list_check_dump_and_delete_a_volume_a_guest_wrote() {
    // The worker opens the pool itself, so no pool service holds the metadata afterwards
    // (`thin check`, like thin_check, checks a pool nothing serves).
    let setup = Setup {
        backend_args: vec!["--no-thin-service".into()],
        ..thin_setup()
    };
    let mut host = Host::serving(setup, cli_pool);
    let mut g = host.guest();
    for block in [0u8, 3, 17] {
        let data = pattern(4096, block);
        let sector = u64::from(block) * 128;
        assert_eq!(g.write(sector, &data), status::OKAY, "block {block}");
    }
    let flush = g.no_data(RwOp::Flush);
    g.send(&flush);
    assert_eq!(g.wait(flush.id()).status, status::OKAY);
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    let target = host.image.display().to_string();
    let (pool, _) = target.rsplit_once(':').expect("POOL:VOLUME");
    let metadata = format!("{pool}/metadata");

    thin(&["snapshot", pool, "vm", "--name", "snap"]);
    assert_eq!(
        listed(pool),
        [("vm".to_owned(), 3), ("snap".to_owned(), 3)],
        "the snapshot shares the volume's three blocks"
    );
    assert_eq!(clean_check(&metadata), (2, 6));
    let xml = thin(&["dump", &metadata]);
    assert_eq!(xml.matches("<device ").count(), 2, "{xml}");
    for peer in Peer::ALL {
        peers::thin_check(peer, Path::new(&metadata)).unwrap_or_else(|e| panic!("{e}"));
    }

    thin(&["delete", pool, "snap"]);
    assert_eq!(listed(pool), [("vm".to_owned(), 3)]);
    assert_eq!(clean_check(&metadata), (1, 3));
    peers::thin_check(Peer::V0_9, Path::new(&metadata)).unwrap_or_else(|e| panic!("{e}"));

    // A bad checksum: `thin check` exits 1 and names the problem, in JSON too.
    let bad = Path::new(pool).join("bad-metadata");
    let mut bytes = std::fs::read(&metadata).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    let bad = bad.to_str().unwrap();
    let out = rustbk(&["thin", "check", bad, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let problems = report["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|p| p["area"] == "superblock"),
        "{report}"
    );
}

#[test]
fn demo_serves_a_volume_of_a_new_thin_pool() {
    let out = rustbk(&["demo", "--thin", "--size=16m", "--duration=0.5", "--qd=4"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(" on thin:") && all.contains("/pool:0"),
        "{all}"
    );
    assert!(all.contains("verify      0 mismatches, 0 errors"), "{all}");
}

/// dm-thin's rule for the data block size: a multiple of 64 KiB from 64 KiB to 1 GiB. Sizes
/// outside it are refused naming the rule; the largest one makes a pool both thin_checks pass.
#[test]
fn create_pool_takes_block_sizes_by_dm_thins_rule() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["32k", "96k", "2g"] {
        let pool = dir.path().join(format!("pool-{bad}"));
        let pool = pool.to_str().unwrap();
        let out = rustbk(&[
            "thin",
            "create-pool",
            pool,
            "--size=2g",
            "--block-size",
            bad,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(
            err.contains("must be a multiple of 64 KiB from 64 KiB to 1 GiB"),
            "{bad}: {err}"
        );
    }
    let pool = dir.path().join("pool-1g");
    let path = pool.to_str().unwrap();
    thin(&["create-pool", path, "--size=2g", "--block-size=1g"]);
    thin(&["create", path, "--size=2g", "--name=big"]);
    let list = json(&thin(&["list", path, "--output", "json"]));
    assert_eq!(list["block_size"], 1u64 << 30, "{list}");
    for peer in Peer::ALL {
        peers::thin_check(peer, &pool.join("metadata")).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A loop device over a sparse file of `size` bytes, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, size: u64) -> Loop {
        std::fs::File::create(file).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup (util-linux) is required");
        assert!(out.status.success(), "losetup: {out:?}");
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A pool at `pool` on the block devices `meta` and `data` (`create-pool --metadata-dev
/// --data-dev`) with volume "vm" of `size`.
fn device_pool(pool: &Path, (meta, data): (&Loop, &Loop), size: &str) {
    let path = pool.to_str().unwrap();
    let devices = ["--metadata-dev", &meta.0, "--data-dev", &data.0];
    thin(&[&["create-pool", path][..], &devices[..]].concat());
    thin(&["create", path, "--size", size, "--name", "vm"]);
}

/// A pool on two block devices (loop devices here, as logical volumes would be): made by
/// `create-pool --metadata-dev --data-dev`, served to a guest whose writes read back, and
/// checked by both thin_checks on the metadata device itself.
#[test]
fn a_pool_on_block_devices_is_served_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Loop::new(&dir.path().join("meta.img"), 16 << 20);
    let data = Loop::new(&dir.path().join("data.img"), 256 << 20);
    let make = |host_dir: &Path| {
        let pool = host_dir.join("pool");
        device_pool(&pool, (&meta, &data), "64m");
        PathBuf::from(format!("{}:vm", pool.display()))
    };
    let setup = Setup {
        backend_args: vec!["--no-thin-service".into()],
        ..thin_setup()
    };
    let mut host = Host::serving(setup, make);
    let mut g = host.guest();
    let writes: Vec<(u64, Vec<u8>)> = (0u8..8)
        .map(|i| (u64::from(i) * 1000 + 8, pattern(4096, i)))
        .collect();
    for (sector, bytes) in &writes {
        assert_eq!(g.write(*sector, bytes), status::OKAY);
    }
    let flush = g.no_data(RwOp::Flush);
    g.send(&flush);
    assert_eq!(g.wait(flush.id()).status, status::OKAY);
    for (sector, bytes) in &writes {
        assert_eq!(g.read(*sector, 1), (status::OKAY, bytes.clone()));
    }
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    for peer in Peer::ALL {
        peers::thin_check(peer, Path::new(&meta.0)).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `--passdown` on a pool whose data device is a block device: the blocks a discard frees go
/// down as BLKDISCARD after the commit that frees them (here a loop device, which punches
/// them out of its backing file).
#[test]
fn passdown_discards_the_freed_blocks_on_a_block_device() {
    use rustbk_formats::suite::{run, write_at};
    use rustbk_formats::{BlockImage, IoOp};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let meta = Loop::new(&dir.path().join("meta.img"), 16 << 20);
    let backing = dir.path().join("data.img");
    let data = Loop::new(&backing, 64 << 20);
    let pool = dir.path().join("pool");
    device_pool(&pool, (&meta, &data), "16m");
    let opts = PoolOptions {
        passdown: true,
        ..PoolOptions::default()
    };
    let opened = PoolDir::new(&pool).open(opts).unwrap();
    let vol = ThinVolume::open_local(&opened, 0, VolumeOptions::default()).unwrap();
    let mut q = vol.open_queue(8).unwrap();
    let mib = 1u64 << 20;
    write_at(&mut *q, 0, &vec![5u8; 4 << 20]).unwrap();
    run(&mut *q, IoOp::Flush).unwrap();
    let used = || std::fs::metadata(&backing).unwrap().blocks() * 512;
    let before = used();
    assert!(
        before >= 4 * mib,
        "{before} bytes of the backing file hold the writes"
    );
    run(
        &mut *q,
        IoOp::Discard {
            offset: 0,
            len: 4 * mib,
        },
    )
    .unwrap();
    run(&mut *q, IoOp::Flush).unwrap();
    let after = used();
    assert!(
        before - after >= 4 * mib - (64 << 10),
        "{before} -> {after} bytes: the freed blocks did not reach the device"
    );
    drop((q, vol, opened));
    peers::thin_check(Peer::V0_9, Path::new(&meta.0)).unwrap_or_else(|e| panic!("{e}"));
}

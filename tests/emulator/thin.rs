//! The backend serving thin volumes (`params` = `thin:POOL:VOLUME`): verified guest I/O into
//! unprovisioned, provisioned and snapshot-shared blocks, and the pool passes thin_check 0.9
//! and 1.1 afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_ring::{DomId, status};
use rustbk_thin::dir::{Devices, PoolDir};
use rustbk_thin::peers::{self, Peer};
use rustbk_thin::pool::{PoolOptions, VolumeSpec};

use crate::harness::{Host, Setup, XVDA, pattern, spec_for};

const SIZE: u64 = 64 << 20;

fn thin_setup() -> Setup {
    Setup {
        format: Some("thin"),
        ..Setup::default()
    }
}

/// A pool in `dir` with volume 0 ("vm") of 64 MiB; returns the `POOL:VOLUME` target.
fn pool_with_volume(dir: &Path) -> PathBuf {
    let pool = PoolDir::new(dir.join("pool"));
    let devices = Devices::Files {
        metadata: 16 << 20,
        data: 4 * SIZE,
    };
    let opened = pool
        .create(&devices, 64 << 10, PoolOptions::default())
        .unwrap();
    let spec = VolumeSpec {
        size: SIZE,
        name: "vm".into(),
        origin: None,
    };
    opened.create_volume(0, spec).unwrap();
    PathBuf::from(format!("{}:vm", pool.path.display()))
}

fn metadata_of(target: &Path) -> PathBuf {
    let text = target.display().to_string();
    let (pool, _) = text.rsplit_once(':').unwrap();
    PoolDir::new(pool).metadata()
}

fn thin_checks(metadata: &Path) {
    for peer in Peer::ALL {
        peers::thin_check(peer, metadata).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn workload(fresh: bool, seed: u64) -> Workload {
    Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 16 << 10,
        queue_depth: 16,
        duration: Duration::from_secs(2),
        max_ops: Some(3000),
        verify: true,
        fresh,
        region: Some(SIZE),
        flush_every: Some(32),
        seed,
        rate: None,
    }
}

#[test]
fn thin_volume_named_by_its_name_is_served_with_verified_io_and_passes_thin_check() {
    let mut host = Host::serving(thin_setup(), pool_with_volume);
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, SIZE / 512);
    let r = workload::run(&mut g.front, &workload(true, 5), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    thin_checks(&metadata_of(&host.image));
}

#[test]
fn snapshot_taken_between_attachments_keeps_the_data_the_origin_overwrites_later() {
    let mut host = Host::serving(thin_setup(), pool_with_volume);
    let first = pattern(64 << 10, 1);
    let mut g = host.guest();
    // A partial block, then a whole one in two halves (a request holds 11 pages at most):
    // all into unprovisioned blocks.
    assert_eq!(g.write(8, &first[..4096]), status::OKAY);
    assert_eq!(g.write(256, &first[..32 << 10]), status::OKAY);
    assert_eq!(g.write(256 + 64, &first[32 << 10..]), status::OKAY);
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    let metadata = metadata_of(&host.image);
    let pool = PoolDir::new(metadata.parent().unwrap());
    pool.open(PoolOptions::default())
        .unwrap()
        .snapshot(0, 1, "snap")
        .unwrap();
    host.cluster.add_disk(&host.spec, &[]).unwrap();
    let mut g = host.guest();
    let second = pattern(4096, 2);
    assert_eq!(
        g.write(8, &second),
        status::OKAY,
        "copy-on-write of a partial block"
    );
    let (st, data) = g.read(0, 2);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        &data[..4096],
        &[0; 4096][..],
        "zeros around the first write"
    );
    assert_eq!(&data[4096..], &second[..], "the origin sees its new data");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    let snap_target = PathBuf::from(format!("{}:snap", pool.path.display()));
    let snap = spec_for(&thin_setup(), DomId(2), &snap_target);
    host.cluster.add_disk(&snap, &[]).unwrap();
    let mut s = host.guest_of(DomId(2), XVDA, |_| {});
    let (st, data) = s.read(8, 1);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        data,
        first[..4096].to_vec(),
        "the snapshot keeps the old data"
    );
    for half in 0..2u64 {
        let (st, data) = s.read(256 + half * 64, 8);
        assert_eq!(st, status::OKAY);
        let at = usize::try_from(half).unwrap() * (32 << 10);
        assert_eq!(
            data,
            first[at..at + (32 << 10)].to_vec(),
            "a block shared with the origin"
        );
    }
    s.front.close().unwrap();
    host.cluster.remove_disk(&snap).unwrap();
    thin_checks(&metadata);
}

//! SIGKILL of a real backend process serving a thin volume in the middle of a write + flush
//! workload: the pool passes rustbk's check and thin_check 0.9 (1.1 every tenth cycle), and
//! every block of the volume reads back a generation the guest may see after a crash.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use rustbk_blkfront::workload::fill_pattern;
use rustbk_formats::{BlockImage, IoOp, SharedBuf};
use rustbk_thin::dir::{Devices, PoolDir};
use rustbk_thin::peers::{self, Peer};
use rustbk_thin::pool::{Origin, PoolOptions, VolumeSpec};
use rustbk_thin::volume::{ThinVolume, VolumeOptions};

use crate::kill9::{DISK, Stats, serve_until_killed};
use crate::rng::{self, Rng};

const CYCLES: usize = 50;

#[test]
fn thin_volume_survives_sigkill_of_the_backend_during_writes_and_flushes() {
    let seed = rng::seed("thin kill9");
    let mut rng = Rng::new(seed);
    let base_dir = tempfile::tempdir().expect("tempdir");
    let (base, content) = origin_image(base_dir.path());
    let start = Instant::now();
    for cycle in 0..CYCLES {
        let block_size = [64u64 << 10, 128 << 10, 1 << 20][cycle % 3];
        let origin = (cycle % 4 == 1).then_some(base.as_path());
        let qd = rng.range(1, 16) as u32;
        let kill_after = Duration::from_millis(rng.range(30, 1200));
        let stats = run_cycle(
            cycle,
            (block_size, origin),
            (qd, kill_after),
            &mut rng,
            &content,
        );
        println!(
            "cycle {cycle}: block {block_size} origin {} qd {qd} kill after {kill_after:?}: \
             {} writes acked, {} flushes acked",
            origin.is_some(),
            stats.writes,
            stats.flushes
        );
    }
    println!(
        "thin kill9: {CYCLES} cycles, 0 corruptions, {:?}",
        start.elapsed()
    );
}

/// A raw origin image: a pattern in its first 48 MiB, zeros after.
fn origin_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut content = vec![0u8; DISK as usize];
    fill_pattern(&mut content[..48 << 20], 0, 0x00ba_5e00);
    let path = dir.join("base.raw");
    std::fs::write(&path, &content).expect("write origin");
    (path, content)
}

fn run_cycle(
    cycle: usize,
    (block_size, origin): (u64, Option<&Path>),
    (qd, kill_after): (u32, Duration),
    rng: &mut Rng,
    content: &[u8],
) -> Stats {
    let work = tempfile::tempdir().expect("tempdir");
    let pool = PoolDir::new(work.path().join("pool"));
    let devices = Devices::Files {
        metadata: 16 << 20,
        data: 2 * DISK,
    };
    let opened = pool
        .create(&devices, block_size, PoolOptions::default())
        .expect("pool");
    let spec = VolumeSpec {
        size: DISK,
        name: String::new(),
        origin: origin.map(|path| Origin {
            path: path.to_owned(),
            format: "raw".into(),
        }),
    };
    opened.create_volume(0, spec).expect("volume");
    drop(opened);
    // The worker owns the pool itself, so the kill hits the process that writes the
    // metadata (a worker started with a pool service is killed in the replay tests).
    let params = format!("thin:{}:0", pool.path.display());
    let (model, stats, seed) =
        serve_until_killed(&params, &["--no-thin-service"], qd, kill_after, rng);
    let context = format!("cycle {cycle} (block {block_size}, workload seed {seed})");
    let report = rustbk_thin::check::check_path(&pool.metadata(), &Default::default())
        .unwrap_or_else(|e| panic!("{context}: rustbk thin check: {e}"));
    assert!(report.is_clean(), "{context}: rustbk thin check: {report}");
    thin_check(&pool.metadata(), cycle % 10 == 0, &context);
    let disk = read_volume(&pool, &context);
    let initial = origin.map(|_| content);
    if let Err(e) = model.verify(model.durable(), &disk, initial) {
        panic!("{context}: {e}");
    }
    stats
}

fn thin_check(metadata: &Path, both: bool, context: &str) {
    let peers = if both {
        &Peer::ALL[..]
    } else {
        &Peer::ALL[..1]
    };
    for &peer in peers {
        if let Err(e) = peers::thin_check(peer, metadata) {
            panic!("{context}: {e}");
        }
    }
}

/// The whole volume as the pool reopened after the crash serves it.
fn read_volume(pool: &PoolDir, context: &str) -> Vec<u8> {
    let opened = pool.open(PoolOptions::default()).expect("reopen the pool");
    let vol = ThinVolume::open_local(&opened, 0, VolumeOptions::default()).expect("volume");
    let mut q = vol.open_queue(4).expect("queue");
    let buf = SharedBuf::new(usize::try_from(DISK).expect("size"));
    let read = IoOp::Read {
        offset: 0,
        bufs: Box::new(buf.clone()),
    };
    let result = rustbk_formats::suite::run(&mut *q, read);
    result.unwrap_or_else(|e| panic!("{context}: reading the volume back: {e}"));
    buf.copy_out()
}

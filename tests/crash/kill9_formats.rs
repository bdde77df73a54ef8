//! SIGKILL of a real backend process in the middle of a write + flush workload on the other
//! allocating formats: a dynamic VHD (qemu's `vpc`) and a monolithicSparse VMDK, both made by
//! qemu-img, in cache mode `none` (O_DIRECT data and metadata). After each kill the image must
//! open in rustbk and convert with qemu-img, and every block must read back a generation the
//! guest may see after a crash: at least what the last completed flush covered.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustbk::cluster::EmuCluster;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_formats::{Format, OpenOptions, open_image};

use crate::kill9::{DISK, Drive, GUEST, REGION, Stats, XVDA, connect, guest_workload, killer};
use crate::model::{BLOCK, Model};
use crate::qemu;
use crate::rng::{self, Rng};

const CYCLES: usize = 6;

#[test]
fn dynamic_vhd_survives_sigkill_of_the_backend_during_writes_and_flushes() {
    sigkill_cycles(
        Format::Vpc,
        "vpc",
        &["-f", "vpc", "-o", "subformat=dynamic,force_size=on"],
    );
}

#[test]
fn sparse_vmdk_survives_sigkill_of_the_backend_during_writes_and_flushes() {
    sigkill_cycles(
        Format::Vmdk,
        "vmdk",
        &["-f", "vmdk", "-o", "subformat=monolithicSparse"],
    );
}

fn sigkill_cycles(format: Format, name: &str, create: &[&str]) {
    let seed = rng::seed(&format!("kill9 {name}"));
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    for cycle in 0..CYCLES {
        let qd = [1, 8, 32][cycle % 3];
        let kill_after = Duration::from_millis(300 + rng.below(1200));
        let stats = run_cycle((format, name), create, qd, kill_after, &mut rng, cycle);
        println!(
            "{name} cycle {cycle}: qd {qd} kill after {kill_after:?}: {} writes acked, {} \
             flushes acked",
            stats.writes, stats.flushes
        );
    }
    println!(
        "kill9 {name}: {CYCLES} cycles, 0 corruptions, {:?}",
        start.elapsed()
    );
}

fn run_cycle(
    (format, name): (Format, &str),
    create: &[&str],
    qd: u32,
    kill_after: Duration,
    rng: &mut Rng,
    cycle: usize,
) -> Stats {
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let image = work.path().join(format!("disk.{name}"));
    let path = image.display().to_string();
    let size = DISK.to_string();
    let mut args = vec!["create", "-q"];
    args.extend_from_slice(create);
    args.extend([path.as_str(), size.as_str()]);
    qemu::ok(&args);
    let emu_dir = tempfile::tempdir().expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rustbk"));
    let mut cluster = EmuCluster::start(&exe, emu_dir.path()).expect("xenstored");
    let prefix = if format == Format::Vpc { "vhd" } else { "vmdk" };
    let spec = VbdSpec::rustbk(GUEST, XVDA, format!("{prefix}:{path}"));
    cluster.add_disk(&spec, &[]).expect("backend");
    let mut front = connect(&cluster, &spec);
    let pid = cluster.backend_pid(&spec).expect("backend pid");
    let mut model = Model::new(REGION / BLOCK, false);
    let mut stats = Stats::default();
    let killed = killer(pid, kill_after);
    let seed = rng.next_u64();
    let log = cluster.backend_log(&spec);
    let drive = Drive {
        qd,
        seed,
        killed: &killed,
        backend_log: &log,
    };
    guest_workload(&mut front, &drive, &mut model, &mut stats);
    drop(front);
    // Reaps the killed backend (and stops xenstored) before the image is looked at.
    drop(cluster);
    let context = format!("{name} cycle {cycle} (qd {qd}, workload seed {seed})");
    let opts = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    if let Err(e) = open_image(&image, format, &opts) {
        panic!("{context}: rustbk cannot open the image after the kill: {e}");
    }
    let disk = qemu::read_raw(&image, &work.path().join("disk.raw"));
    assert_eq!(disk.len() as u64, DISK, "{context}: converted size");
    if let Err(e) = model.verify(model.durable(), &disk, None) {
        panic!("{context}: {e}");
    }
    stats
}

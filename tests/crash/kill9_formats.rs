//! SIGKILL of a real backend process in the middle of a write + flush workload on the other
//! allocating formats: a dynamic VHD (qemu's `vpc`) and a monolithicSparse VMDK, both made by
//! qemu-img, in cache mode `none` (O_DIRECT data and metadata). After each kill the image must
//! open in rustbk and convert with qemu-img, and every block must read back a generation the
//! guest may see after a crash: at least what the last completed flush covered.

use std::time::{Duration, Instant};

use rustbk_formats::{Format, OpenOptions, open_image};

use crate::kill9::{DISK, Stats, serve_until_killed};
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
    let prefix = if format == Format::Vpc { "vhd" } else { "vmdk" };
    let (model, stats, seed) =
        serve_until_killed(&format!("{prefix}:{path}"), &[], qd, kill_after, rng);
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

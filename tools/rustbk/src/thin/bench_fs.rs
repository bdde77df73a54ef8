//! The file system's own ceiling for first writes: fio writing 4 KiB at random into
//! preallocated space (unwritten extents, as the pool's data file has ahead of its blocks)
//! against fio overwriting the written raw file, in the same round as the thin case.
//!
//! A first write into an unwritten extent makes the file system split the extent when the
//! write is submitted and convert the written part when it completes; an overwrite does
//! neither. No backend can make first writes into such a file faster than fio does, so this
//! ratio bounds the thin volume's first-write ratio on the same file system.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::{FallocateFlags, fallocate};
use rustbk_formats::CacheMode;
use serde::Serialize;

use super::bench::{median, print_row};
use crate::cluster::EmuCluster;
use crate::cmd::bench::{FioCase, fio_case};

/// Size of the preallocated file: 4M blocks of 4 KiB, so that at 60K IOPS a 10 s run's
/// writes land on a block written before about 7% of the time. (It takes real space, so
/// it is not as large as the thin case's sparse volume.)
const SIZE: i64 = 16 << 30;
/// Free space the bench keeps besides the preallocated file.
const SPARE: u64 = 12 << 30;
/// How long to wait for the space of pools just removed to come back.
const SPACE_WAIT: Duration = Duration::from_secs(30);

/// fio into unwritten extents against fio on the written raw file, every round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceiling {
    /// IOPS into preallocated space, each round.
    pub unwritten_iops: Vec<f64>,
    /// IOPS overwriting the raw file, each round.
    pub written_iops: Vec<f64>,
}

impl Ceiling {
    /// Runs both for `runtime` seconds; `raw` is the written raw file.
    pub fn measure(
        &mut self,
        cluster: &mut EmuCluster,
        raw: &Path,
        runtime: f64,
    ) -> anyhow::Result<()> {
        let path = cluster.dir().join("prealloc.img");
        preallocate(&path)?;
        let run = |cluster: &mut EmuCluster, image: &Path| {
            let case = FioCase {
                image,
                rw: "randwrite",
                qd: 32,
                runtime,
                cache: CacheMode::None,
                poll: false,
            };
            fio_case(cluster, &case).map(|r| r.iops)
        };
        let unwritten = run(cluster, &path);
        std::fs::remove_file(&path)?;
        self.unwritten_iops.push(unwritten?);
        self.written_iops.push(run(cluster, raw)?);
        Ok(())
    }

    /// Median IOPS into unwritten extents over median IOPS of overwrites.
    pub fn ratio(&self) -> f64 {
        median(&self.unwritten_iops) / median(&self.written_iops).max(f64::MIN_POSITIVE)
    }

    /// One line under the table.
    pub fn print_human(&self) {
        print_row(
            "fio: first writes, preallocated file",
            "fio on the raw file",
            self.ratio(),
            (&self.unwritten_iops, &self.written_iops),
        );
    }
}

/// Makes `path` a file of [`SIZE`] preallocated bytes, after checking that the file system
/// has [`SPARE`] free besides (the file takes real space, and so do the bench's full pool and
/// images); removes it again if the preallocation fails.
fn preallocate(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let size = SIZE.unsigned_abs();
    let free = free_space(dir, size.saturating_add(SPARE))?;
    anyhow::ensure!(
        free >= size.saturating_add(SPARE),
        "the fio bound needs a {} GiB preallocated file in {} and {} GiB free besides; {} GiB are free",
        size >> 30,
        dir.display(),
        SPARE >> 30,
        free >> 30
    );
    let file = std::fs::File::create(path)?;
    let made = fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, SIZE);
    if let Err(e) = made {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("cannot preallocate {}", path.display()));
    }
    Ok(())
}

/// The bytes free in `dir`'s file system, once there are `want` or after [`SPACE_WAIT`]:
/// the pools a case just removed are freed only when their pool services have exited.
fn free_space(dir: &Path, want: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + SPACE_WAIT;
    loop {
        let fs = nix::sys::statvfs::statvfs(dir)
            .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        if free >= want || Instant::now() >= deadline {
            return Ok(free);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

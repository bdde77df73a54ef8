//! Workload arguments → workload.

use std::time::Duration;

use anyhow::{bail, ensure};
use rustbk_blkfront::workload::{Pattern, Workload};

use crate::cli::{RwArg, WorkloadArgs};

/// Builds the workload the arguments describe.
pub fn workload_from_args(a: &WorkloadArgs, fresh: bool) -> anyhow::Result<Workload> {
    ensure!(a.rwmix_read <= 100, "--rwmix-read must be 0..=100");
    ensure!(a.qd > 0, "--qd must be at least 1");
    ensure!(
        a.duration.is_finite() && a.duration > 0.0,
        "--duration must be positive"
    );
    let (pattern, read_percent) = match a.rw {
        RwArg::Read => (Pattern::Sequential, 100),
        RwArg::Write => (Pattern::Sequential, 0),
        RwArg::Rw => (Pattern::Sequential, a.rwmix_read),
        RwArg::Randread => (Pattern::Random, 100),
        RwArg::Randwrite => (Pattern::Random, 0),
        RwArg::Randrw => (Pattern::Random, a.rwmix_read),
    };
    let Ok(block_size) = usize::try_from(a.bs) else {
        bail!("--bs too large")
    };
    ensure!(
        block_size >= 512 && block_size % 512 == 0,
        "--bs must be a multiple of 512"
    );
    ensure!(block_size <= 4 << 20, "--bs must be at most 4 MiB");
    Ok(Workload {
        pattern,
        read_percent,
        block_size,
        queue_depth: a.qd,
        duration: Duration::from_secs_f64(a.duration),
        max_ops: None,
        verify: !a.no_verify,
        fresh,
        region: None,
        flush_every: a.flush_every,
        seed: a.seed,
        rate: None,
    })
}

/// A short description like `randrw 4k qd32`.
pub fn describe(a: &WorkloadArgs) -> String {
    let rw = format!("{:?}", a.rw).to_lowercase();
    format!("{rw} {} qd{}", human_bytes(a.bs), a.qd)
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}g", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}m", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

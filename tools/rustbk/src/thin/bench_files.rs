//! fio on the two files the provisioned cases' disks live in: the pool's data file and the raw
//! file, in the same round as the thin case.
//!
//! The two are different files, so they lie on different parts of the disk beneath them, and
//! on a virtual disk those parts can differ widely. On the development VM, fio's 4 KiB random
//! overwrites at queue depth 32 ran at 42k IOPS on one 1 GiB file and at 100k on a copy of
//! it, while reads ran alike. A thin/raw ratio is only as fair as these two files are alike;
//! this measures how alike they are.

use std::path::Path;

use rustbk_formats::CacheMode;
use serde::Serialize;

use super::bench::{median, print_row};
use crate::cluster::EmuCluster;
use crate::cmd::bench::{FioCase, fio_case};

/// fio's reads and overwrites on both files, each round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Files {
    /// Reads of the pool's data file.
    pub data_read_iops: Vec<f64>,
    /// Reads of the raw file.
    pub raw_read_iops: Vec<f64>,
    /// Overwrites of the pool's data file.
    pub data_write_iops: Vec<f64>,
    /// Overwrites of the raw file.
    pub raw_write_iops: Vec<f64>,
}

impl Files {
    /// Runs fio's reads, then its overwrites, on `data` then `raw`, for `runtime` seconds each.
    pub fn measure(
        &mut self,
        cluster: &mut EmuCluster,
        (data, raw): (&Path, &Path),
        runtime: f64,
    ) -> anyhow::Result<()> {
        let mut run = |image: &Path, rw: &str| {
            let case = FioCase {
                image,
                rw,
                qd: 32,
                runtime,
                cache: CacheMode::None,
                poll: false,
            };
            fio_case(cluster, &case).map(|r| r.iops)
        };
        self.data_read_iops.push(run(data, "randread")?);
        self.raw_read_iops.push(run(raw, "randread")?);
        self.data_write_iops.push(run(data, "randwrite")?);
        self.raw_write_iops.push(run(raw, "randwrite")?);
        Ok(())
    }

    /// Two lines under the table.
    pub fn print_human(&self) {
        let rows = [
            (
                "fio: reads, pool's data file",
                &self.data_read_iops,
                &self.raw_read_iops,
            ),
            (
                "fio: overwrites, pool's data file",
                &self.data_write_iops,
                &self.raw_write_iops,
            ),
        ];
        for (case, data, raw) in rows {
            let ratio = median(data) / median(raw).max(f64::MIN_POSITIVE);
            print_row(case, "fio on the raw file", ratio, (data, raw));
        }
    }
}

//! Checking a pool's metadata without trusting it.
//!
//! [`check`] reads the metadata device block by block with the persistent-data decoders, never
//! through [`crate::meta::Metadata::open`] (which stops at the first problem), and records
//! every problem it finds up to a limit: the superblock, the shape of every B-tree (checksums,
//! node kinds and value sizes, key order and ranges, fill, cycles), the devices against the
//! mapping tree, the structure of both space maps, and a recount of every metadata and data
//! block's references compared with the stored counts. Each shared subtree is walked once.

mod counts;
mod report;
mod sm;
mod superblock;
#[cfg(test)]
mod tests;
mod trees;

pub use report::{Area, Problem, Report, Totals};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;

use crate::error::{Error, Result};
use crate::meta::{DeviceDetails, Superblock};
use crate::pdata::dev::MetaDev;
use crate::pdata::sm::IndexEntry;
use trees::Seen;

/// How to check.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Problems recorded before the check stops looking.
    pub max_problems: usize,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions { max_problems: 1000 }
    }
}

/// Checks the pool metadata on `file`. Fails only if the file's size cannot be read; every
/// problem of the metadata itself is in the report.
pub fn check(file: Arc<EngineFile>, opts: &CheckOptions) -> Result<Report> {
    let whole = file.size()? / crate::pdata::BLOCK_SIZE as u64;
    let mut report = Report::new(opts.max_problems.max(1));
    let Some((sb, nr_blocks)) = superblock::check(&file, whole, &mut report) else {
        return Ok(report);
    };
    let dev = MetaDev::new(file, nr_blocks)?;
    let mut checker = Checker::new(dev, sb, report)?;
    checker.run();
    Ok(checker.finish())
}

/// Checks the pool metadata in the file or device at `path`, opened read-only.
pub fn check_path(path: &Path, opts: &CheckOptions) -> Result<Report> {
    let file = EngineFile::open(path, Access::ReadOnly, rustbk_formats::CacheMode::Writeback)?;
    check(Arc::new(file), opts)
}

/// The state of one check.
struct Checker {
    dev: MetaDev,
    sb: Superblock,
    report: Report,
    /// References found to each metadata block.
    refs: Vec<u32>,
    /// Nodes walked (or being walked).
    nodes: HashMap<u64, Seen>,
    /// The top-level mapping tree: device id to block tree root.
    top: BTreeMap<u64, u64>,
    /// The device details tree.
    details: BTreeMap<u64, DeviceDetails>,
    /// The data block of every mapping, once per leaf that holds it.
    data_refs: Vec<u64>,
    /// The data space map's index tree entries.
    data_index: Vec<(u64, IndexEntry)>,
    /// The overflow counts of the data (0) and metadata (1) space maps.
    overflow: [BTreeMap<u64, u32>; 2],
}

impl Checker {
    fn new(dev: MetaDev, sb: Superblock, report: Report) -> Result<Checker> {
        let len =
            usize::try_from(dev.nr_blocks()).map_err(|_| Error::corrupt("metadata device size"))?;
        Ok(Checker {
            dev,
            sb,
            report,
            refs: vec![0; len],
            nodes: HashMap::new(),
            top: BTreeMap::new(),
            details: BTreeMap::new(),
            data_refs: Vec::new(),
            data_index: Vec::new(),
            overflow: [BTreeMap::new(), BTreeMap::new()],
        })
    }

    fn run(&mut self) {
        self.reference(0, "the superblock", Area::Superblock);
        self.walk(trees::Tree::Details, self.sb.details_root);
        self.walk(trees::Tree::Top, self.sb.mapping_root);
        self.check_devices();
        self.check_data_sm();
        let stored = self.check_metadata_sm();
        self.compare_metadata_counts(&stored);
    }

    fn finish(mut self) -> Report {
        self.report.totals.devices = self.top.len() as u64;
        self.report.totals.metadata_blocks_used =
            self.refs.iter().filter(|&&c| c > 0).count() as u64;
        self.report
    }

    /// Records a problem.
    fn problem(&mut self, area: Area, block: Option<u64>, device: Option<u64>, message: String) {
        self.report.add(Problem {
            area,
            block,
            device,
            message,
        });
    }

    /// Counts one reference to metadata block `block` from `what`; false (and a problem of
    /// `area`) if the block is past the end of the metadata.
    fn reference(&mut self, block: u64, what: &str, area: Area) -> bool {
        let slot = usize::try_from(block)
            .ok()
            .and_then(|i| self.refs.get_mut(i));
        match slot {
            Some(count) => {
                *count = count.saturating_add(1);
                true
            }
            None => {
                let message = format!(
                    "{what} points at block {block}, past the end of the metadata ({} blocks)",
                    self.dev.nr_blocks()
                );
                self.problem(area, None, None, message);
                false
            }
        }
    }

    /// References found so far to metadata block `block`.
    fn refs_of(&self, block: u64) -> u32 {
        usize::try_from(block)
            .ok()
            .and_then(|i| self.refs.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Compares the device details with the top-level mapping tree, device by device.
    fn check_devices(&mut self) {
        let roots: Vec<(u64, u64)> = self.top.iter().map(|(&id, &root)| (id, root)).collect();
        for (id, root) in roots {
            let mapped = self.walk(trees::Tree::Device(id), root);
            self.report.totals.mappings = self.report.totals.mappings.saturating_add(mapped);
            match self.details.get(&id).copied() {
                None => self.problem(
                    Area::Devices,
                    None,
                    Some(id),
                    "device is in the mapping tree but has no details".into(),
                ),
                Some(d) => self.check_details(id, d, mapped),
            }
        }
        let orphans: Vec<u64> = self
            .details
            .keys()
            .filter(|id| !self.top.contains_key(id))
            .copied()
            .collect();
        for id in orphans {
            let message = "device has details but no mapping tree".into();
            self.problem(Area::Devices, None, Some(id), message);
        }
    }

    fn check_details(&mut self, id: u64, d: DeviceDetails, mapped: u64) {
        if d.mapped_blocks != mapped {
            let message = format!(
                "details record {} mapped blocks, its tree holds {mapped}",
                d.mapped_blocks
            );
            self.problem(Area::Devices, None, Some(id), message);
        }
        for (what, time) in [
            ("creation", d.creation_time),
            ("snapshot", d.snapshotted_time),
        ] {
            if time > self.sb.time {
                let message = format!(
                    "{what} time {time} is after the pool's time {}",
                    self.sb.time
                );
                self.problem(Area::Devices, None, Some(id), message);
            }
        }
    }
}

/// The message of a decoding error, without the block it names (the problem names it).
fn describe(e: Error) -> String {
    match e {
        Error::BadBlock { why, .. } => why,
        other => other.to_string(),
    }
}

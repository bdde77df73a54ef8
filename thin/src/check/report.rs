//! What a check found: every problem (up to a limit) with the part of the pool it concerns,
//! and totals. Printed with `Display`, or serialised for `--output=json`.

use std::fmt;

use serde::Serialize;

/// The part of the pool a problem concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// The superblock at block 0.
    Superblock,
    /// A B-tree node or the shape of a tree.
    Btree,
    /// The device details tree against the mapping tree.
    Devices,
    /// A mapping of a thin device.
    Mappings,
    /// The structure of the metadata space map (index, bitmaps, overflow tree).
    MetadataSpaceMap,
    /// The structure of the data space map.
    DataSpaceMap,
    /// A metadata block whose stored count is not its number of references.
    MetadataCount,
    /// A metadata block counted as used that nothing references.
    MetadataLeak,
    /// A data block whose stored count is not its number of references.
    DataCount,
    /// A data block counted as used that no mapping references.
    DataLeak,
}

impl Area {
    /// Whether the problem is only space that nothing uses (the pool is otherwise sound).
    pub fn is_leak(self) -> bool {
        matches!(self, Area::MetadataLeak | Area::DataLeak)
    }
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The part of the pool concerned.
    pub area: Area,
    /// The metadata block concerned, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<u64>,
    /// The thin device concerned, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<u64>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.area)?;
        if let Some(dev) = self.device {
            write!(f, " (device {dev})")?;
        }
        if let Some(block) = self.block {
            write!(f, " (metadata block {block})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Totals found on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Thin devices in the mapping tree.
    pub devices: u64,
    /// Mappings of every device (a shared mapping once per device).
    pub mappings: u64,
    /// Metadata blocks referenced.
    pub metadata_blocks_used: u64,
    /// Data blocks referenced.
    pub data_blocks_used: u64,
    /// Metadata blocks counted as used that nothing references.
    pub metadata_blocks_leaked: u64,
    /// Data blocks counted as used that nothing references.
    pub data_blocks_leaked: u64,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The problems found, in the order found.
    pub problems: Vec<Problem>,
    /// True if the check stopped recording problems at the limit.
    pub truncated: bool,
    /// Totals.
    pub totals: Totals,
    #[serde(skip)]
    limit: usize,
}

impl Report {
    /// An empty report that records at most `limit` problems.
    pub fn new(limit: usize) -> Report {
        Report {
            limit,
            ..Report::default()
        }
    }

    /// True if no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// True if every problem found is a leak (space lost, nothing wrong with the data).
    pub fn only_leaks(&self) -> bool {
        self.problems.iter().all(|p| p.area.is_leak())
    }

    /// The problems of one area.
    pub fn in_area(&self, area: Area) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.area == area)
    }

    /// True once the limit is reached: further problems are not recorded.
    pub fn full(&self) -> bool {
        self.problems.len() >= self.limit
    }

    /// Records a problem (unless the limit is reached).
    pub fn add(&mut self, problem: Problem) {
        match self.full() {
            true => self.truncated = true,
            false => self.problems.push(problem),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        if self.truncated {
            writeln!(f, "(more problems not shown)")?;
        }
        let t = &self.totals;
        write!(
            f,
            "{} problems; {} devices, {} mappings, {} metadata and {} data blocks in use",
            self.problems.len(),
            t.devices,
            t.mappings,
            t.metadata_blocks_used,
            t.data_blocks_used
        )
    }
}

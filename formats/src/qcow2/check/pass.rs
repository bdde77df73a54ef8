//! One check pass: count every reference, then compare with the stored refcounts.

use crate::error::Error;

use super::super::header::{Header, MAX_L1_BYTES};
use super::super::layout::{COMPRESSED, COPIED, OFFSET_MASK, ZERO, small};
use super::super::metaio::{MetaIo, MetaKind};
use super::refs::Refs;
use super::snapshots;
use super::stored::{REFT_RESERVED, Stored};
use super::{CheckReport, Progress, header_flags};

/// Reserved bits of a standard L2 entry.
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of an L1 entry.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;

/// A table entry to rewrite (`-r all`): its file offset and its corrected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EntryFix {
    /// File offset of the 8-byte entry.
    pub at: u64,
    /// The corrected entry.
    pub value: u64,
}

/// What a pass found.
pub(super) struct Pass {
    /// Counts and messages.
    pub report: CheckReport,
    /// References per host cluster, including the refcount structure.
    pub refs: Refs,
    /// The refcount structure must be rebuilt to repair the corruptions found.
    pub rebuild: bool,
    /// Clusters whose stored refcount is lower than their references.
    pub too_low: u64,
    /// Byte ranges of the refcount table and of the usable refcount blocks.
    pub refstruct: Vec<(u64, u64)>,
    /// L1/L2 entries with a repairable defect (COPIED flag, misaligned zero cluster).
    pub fixes: Vec<EntryFix>,
}

impl Pass {
    /// Nothing to repair.
    pub fn is_sound(&self) -> bool {
        self.report.is_clean()
    }
}

/// Runs one pass over the image.
pub(super) fn run(io: &dyn MetaIo, h: &Header, progress: Progress<'_>) -> Result<Pass, Error> {
    let file_size = io.size()?;
    let mut stored = Stored::load(io, h)?;
    let mut w = Walker {
        io,
        h,
        cs: h.cluster_size(),
        file_size,
        refs: Refs::new(file_size, h.cluster_bits)?,
        report: CheckReport::default(),
        fixes: Vec::new(),
        next_contiguous: 0,
    };
    (w.report.dirty, w.report.marked_corrupt) = header_flags(h);
    w.report.total_clusters = h.size.div_ceil(w.cs);
    let total = u64::from(h.l1_size) + w.refs.len();
    w.refs.inc(&mut w.report, 0, w.cs);
    let l1 = read_l1(io, h.l1_table_offset, h.l1_size)?;
    w.refs
        .inc(&mut w.report, h.l1_table_offset, u64::from(h.l1_size) * 8);
    w.walk_l1(h.l1_table_offset, &l1, Some(&mut stored), &mut |i| {
        progress(i, total);
    })?;
    w.walk_snapshots()?;
    let reftable_len = u64::from(h.refcount_table_clusters) * w.cs;
    w.refs
        .inc(&mut w.report, h.refcount_table_offset, reftable_len);
    let mut pass = Pass {
        report: CheckReport::default(),
        refs: Refs::new(0, h.cluster_bits)?,
        rebuild: false,
        too_low: 0,
        refstruct: vec![(h.refcount_table_offset, reftable_len)],
        fixes: Vec::new(),
    };
    w.check_refblocks(&mut stored, &mut pass);
    w.compare(&mut stored, &mut pass, &mut |c| {
        progress(u64::from(h.l1_size) + c, total);
    })?;
    progress(total, total);
    pass.report = w.report;
    pass.refs = w.refs;
    pass.fixes = w.fixes;
    Ok(pass)
}

fn read_l1(io: &dyn MetaIo, offset: u64, entries: u32) -> Result<Vec<u64>, Error> {
    let mut bytes = vec![0u8; small(u64::from(entries) * 8)];
    io.read_exact(MetaKind::L1, offset, &mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

struct Walker<'a> {
    io: &'a dyn MetaIo,
    h: &'a Header,
    cs: u64,
    file_size: u64,
    refs: Refs,
    report: CheckReport,
    fixes: Vec<EntryFix>,
    next_contiguous: u64,
}

impl Walker<'_> {
    /// Walks an L1 table; `stored` is given for the active table (COPIED flags and
    /// fragmentation are only checked there).
    fn walk_l1(
        &mut self,
        l1_offset: u64,
        l1: &[u64],
        mut stored: Option<&mut Stored<'_>>,
        step: &mut dyn FnMut(u64),
    ) -> Result<(), Error> {
        for (i, &entry) in l1.iter().enumerate() {
            step(i as u64);
            if entry & L1_RESERVED != 0 {
                self.corrupt(format!(
                    "ERROR found L1 entry with reserved bits set: {entry:x}"
                ));
            }
            let l2 = entry & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            self.refs.inc(&mut self.report, l2, self.cs);
            if let Some(stored) = stored.as_deref_mut() {
                let rc = stored.get(l2 / self.cs)?;
                if (rc == 1) != (entry & COPIED != 0) {
                    self.corrupt(format!(
                        "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={entry:x} refcount={rc}"
                    ));
                    self.copied_fix(l1_offset + i as u64 * 8, entry, rc);
                }
            }
            if l2 % self.cs != 0 {
                self.corrupt(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                continue;
            }
            if l2 >= self.file_size {
                continue;
            }
            let mut table = vec![0u8; small(self.cs)];
            let got = self.io.read(MetaKind::L2, l2, &mut table)?;
            table[got..].fill(0);
            self.walk_l2(l2, &table, stored.as_deref_mut())?;
        }
        Ok(())
    }

    fn walk_l2(
        &mut self,
        table_offset: u64,
        table: &[u8],
        mut stored: Option<&mut Stored<'_>>,
    ) -> Result<(), Error> {
        for (i, raw) in table.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(raw.try_into().unwrap_or_default());
            let at = table_offset + i as u64 * 8;
            if entry & COMPRESSED != 0 {
                self.compressed(at, entry, stored.is_some());
            } else {
                self.standard(at, entry, stored.as_deref_mut())?;
            }
        }
        Ok(())
    }

    fn compressed(&mut self, at: u64, entry: u64, active: bool) {
        let x = 62 - (self.h.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry & !(COPIED | COMPRESSED)) >> x;
        if entry & COPIED != 0 {
            self.corrupt(format!(
                "ERROR: coffset={host:#x}: copied flag must never be set for compressed clusters"
            ));
            self.fixes.push(EntryFix {
                at,
                value: entry & !COPIED,
            });
        }
        let len = (sectors + 1) * 512 - (host & 511);
        self.refs.inc(&mut self.report, host, len);
        if active {
            self.report.allocated_clusters += 1;
            self.report.compressed_clusters += 1;
            self.report.fragmented_clusters += 1;
        }
    }

    fn standard(
        &mut self,
        at: u64,
        entry: u64,
        stored: Option<&mut Stored<'_>>,
    ) -> Result<(), Error> {
        if entry & L2_RESERVED != 0 {
            self.corrupt(format!(
                "ERROR found l2 entry with reserved bits set: {entry:x}"
            ));
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return Ok(());
        }
        if host % self.cs != 0 {
            self.corrupt(format!(
                "ERROR offset={host:x}: Cluster is not properly aligned; L2 entry corrupted"
            ));
            if entry & ZERO != 0 {
                self.fixes.push(EntryFix { at, value: ZERO });
            }
            return Ok(());
        }
        let Some(stored) = stored else {
            self.refs.inc(&mut self.report, host, self.cs);
            return Ok(());
        };
        self.report.allocated_clusters += 1;
        if self.next_contiguous != 0 && host != self.next_contiguous {
            self.report.fragmented_clusters += 1;
        }
        self.next_contiguous = host + self.cs;
        self.refs.inc(&mut self.report, host, self.cs);
        let rc = stored.get(host / self.cs)?;
        if (rc == 1) != (entry & COPIED != 0) {
            self.corrupt(format!(
                "ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={rc}"
            ));
            self.copied_fix(at, entry, rc);
        }
        Ok(())
    }

    fn copied_fix(&mut self, at: u64, entry: u64, rc: u64) {
        let value = if rc == 1 {
            entry | COPIED
        } else {
            entry & !COPIED
        };
        self.fixes.push(EntryFix { at, value });
    }

    fn corrupt(&mut self, message: String) {
        self.report.corruptions += 1;
        self.report.note(message);
    }

    fn walk_snapshots(&mut self) -> Result<(), Error> {
        let (l1s, table_len) = snapshots::read(self.io, self.h)?;
        for (n, sn) in l1s.iter().enumerate() {
            let bytes = u64::from(sn.entries) * 8;
            if sn.offset % self.cs != 0 || bytes > MAX_L1_BYTES {
                self.corrupt(format!(
                    "ERROR snapshot {n} l1_offset={:#x} l1_size={}: L1 table invalid; \
                     snapshot table entry corrupted",
                    sn.offset, sn.entries
                ));
                continue;
            }
            self.refs.inc(&mut self.report, sn.offset, bytes);
            let inside = sn
                .offset
                .checked_add(bytes)
                .is_some_and(|e| e <= self.file_size);
            if !inside {
                continue;
            }
            let l1 = read_l1(self.io, sn.offset, sn.entries)?;
            self.walk_l1(sn.offset, &l1, None, &mut |_| {})?;
        }
        self.refs
            .inc(&mut self.report, self.h.snapshots_offset, table_len);
        Ok(())
    }

    /// Counts the refcount blocks and checks their table entries.
    fn check_refblocks(&mut self, stored: &mut Stored<'_>, pass: &mut Pass) {
        let entries: Vec<u64> = stored.reftable().to_vec();
        for (i, &entry) in entries.iter().enumerate() {
            let offset = entry & !REFT_RESERVED;
            if entry & REFT_RESERVED != 0 {
                self.corrupt(format!("ERROR reftable entry {i} has reserved bits set"));
                pass.rebuild = true;
                stored.forget(i);
                continue;
            }
            if offset == 0 {
                continue;
            }
            if offset % self.cs != 0 {
                self.corrupt(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
            } else if offset / self.cs >= self.refs.len() {
                self.corrupt(format!("ERROR refcount block {i} is outside image"));
            } else {
                self.refs.inc(&mut self.report, offset, self.cs);
                let n = self.refs.get(offset / self.cs);
                pass.refstruct.push((offset, self.cs));
                if n == 1 {
                    continue;
                }
                self.corrupt(format!("ERROR refcount block {i} refcount={n}"));
                pass.rebuild = true;
                continue;
            }
            pass.rebuild = true;
            stored.forget(i);
        }
    }

    /// Compares the stored refcounts with the references counted.
    fn compare(
        &mut self,
        stored: &mut Stored<'_>,
        pass: &mut Pass,
        step: &mut dyn FnMut(u64),
    ) -> Result<(), Error> {
        let mut highest = 0;
        for c in 0..self.refs.len() {
            if c % 4096 == 0 {
                step(c);
            }
            let have = stored.get(c)?;
            let want = self.refs.get(c);
            if have > 0 || want > 0 {
                highest = c;
            }
            if have == want {
                continue;
            }
            if have < want {
                pass.too_low += 1;
                pass.rebuild |= have == 0;
                self.corrupt(format!(
                    "ERROR cluster {c} refcount={have} reference={want}"
                ));
            } else {
                self.report.leaks += 1;
                self.report.note(format!(
                    "Leaked cluster {c} refcount={have} reference={want}"
                ));
            }
        }
        self.report.image_end_offset = (highest + 1) * self.cs;
        Ok(())
    }
}

//! One pass of the VHD checker over the file: footers, header, BAT, metadata regions,
//! blocks, leaks and the parent.

use std::path::PathBuf;
use std::sync::Arc;

use crate::BackingPolicy;
use crate::confine::{Confinement, Named};
use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::super::dynamic::{self, DynHeader, HEADER_LEN, UNUSED};
use super::super::footer::{DiskType, FOOTER_LEN, Footer};
use super::super::meta::data_align;
use super::super::metaio::{self, VhdIo};
use super::super::{MAX_BAT_BYTES, batmap_end, locator};
use super::{FindingKind, VhdCheckReport};

const FOOTER: u64 = FOOTER_LEN as u64;
/// Gaps shorter than this before a block starting on such a boundary are alignment, not
/// leaks; so are gaps before a block whose data area (after its bitmap) starts where rustbk
/// places new blocks' data (`meta::data_align`).
const ALIGN: u64 = 4096;

/// An error's message without its kind (findings say what kind they are).
fn text(e: &Error) -> String {
    match e {
        Error::InvalidImage(m) | Error::UnsupportedFeature(m) => m.clone(),
        other => other.to_string(),
    }
}

/// An error's message followed by those of its sources.
fn full(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// The state of the footer copy at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyState {
    /// Fixed disks have none (their sector 0 is guest data).
    None,
    /// Valid, and the same bytes as the footer at the end (or the footer in use).
    Good,
    /// Not a valid footer.
    Damaged,
    /// Valid, but not the footer at the end.
    Differs,
}

/// The dynamic header as found.
pub(super) struct HeaderFacts {
    /// Its bytes.
    pub raw: [u8; HEADER_LEN],
    /// Its checksum field is right.
    pub checksum_ok: bool,
}

/// What one pass found, with what a repair needs to know.
pub(super) struct Scan {
    /// The report of this pass.
    pub report: VhdCheckReport,
    /// The file size.
    pub size: u64,
    /// The footer in use (the end one, else the copy).
    pub footer: Footer,
    /// The footer at the end is valid.
    pub end_ok: bool,
    /// The copy at offset 0.
    pub copy: CopyState,
    /// The dynamic header, when it could be parsed (checksum aside).
    pub header: Option<HeaderFacts>,
    /// First byte after every block and metadata structure (where the footer belongs),
    /// when known.
    pub used_end: Option<u64>,
    /// Some block or metadata structure other than the copy lies in the first sector.
    pub first_sector_used: bool,
    /// Corruptions other than the footers and the header checksum.
    pub other_corruptions: u64,
}

/// Runs one pass over `file`; `backing` confines the search for a parent.
pub(super) fn scan(file: &Arc<EngineFile>, backing: &BackingPolicy) -> Result<Scan, Error> {
    let size = file.size()?;
    if size < FOOTER {
        return Err(Error::InvalidImage(format!(
            "a VHD file holds at least its {FOOTER}-byte footer; this one has {size} bytes"
        )));
    }
    let mut report = VhdCheckReport::default();
    let (footer, end_ok, copy) = footers(file, size, &mut report)?;
    report.disk_type = Some(footer.disk_type);
    let mut scan = Scan {
        report,
        size,
        footer,
        end_ok,
        copy,
        header: None,
        used_end: None,
        first_sector_used: false,
        other_corruptions: 0,
    };
    if scan.footer.disk_type == DiskType::Fixed {
        scan.fixed();
    } else {
        scan.dynamic(file, backing)?;
    }
    Ok(scan)
}

/// The footer at the end and its copy: the footer to use, whether the end one is valid, and
/// the copy's state. Neither valid: the file is not taken for a VHD (an error).
fn footers(
    file: &EngineFile,
    size: u64,
    report: &mut VhdCheckReport,
) -> Result<(Footer, bool, CopyState), Error> {
    let mut tail = [0u8; FOOTER_LEN];
    metaio::read_exact(file, size - FOOTER, &mut tail, "footer")?;
    let mut head = [0u8; FOOTER_LEN];
    metaio::read_exact(file, 0, &mut head, "footer copy")?;
    let end = Footer::parse(&tail, "at the end of the file");
    let copy = Footer::parse(&head, "copy at offset 0");
    Ok(match (end, copy) {
        (Ok(end), _) if end.disk_type == DiskType::Fixed => (end, true, CopyState::None),
        (Ok(end), Ok(c)) if c.raw == end.raw => (end, true, CopyState::Good),
        (Ok(end), Ok(_)) => {
            report.corrupt("VHD footer copy at offset 0 differs from the footer at the end".into());
            (end, true, CopyState::Differs)
        }
        (Ok(end), Err(e)) => {
            report.corrupt(text(&e));
            (end, true, CopyState::Damaged)
        }
        (Err(e), Ok(c)) if c.disk_type != DiskType::Fixed => {
            report.corrupt(format!("{}; the copy at offset 0 is used", text(&e)));
            (c, false, CopyState::Good)
        }
        (Err(e), _) => return Err(e),
    })
}

impl Scan {
    fn other(&mut self, message: String) {
        self.other_corruptions += 1;
        self.report.corrupt(message);
    }

    fn leak(&mut self, start: u64, end: u64, what: &str) {
        self.report.leaked_bytes += end - start;
        self.report.note(
            FindingKind::Leak,
            format!(
                "{} bytes at {start:#x}..{end:#x} {what} that no block or metadata uses",
                end - start
            ),
        );
    }

    /// A fixed disk: its data (the larger of the footer's sizes) and the footer fill the file.
    fn fixed(&mut self) {
        let data = self.footer.current_size.max(self.footer.virtual_size());
        let footer_at = self.size - FOOTER;
        if data > footer_at {
            self.other(format!(
                "fixed VHD of {data} bytes in a file of {} bytes (its data and footer need {} \
                 bytes)",
                self.size,
                data.saturating_add(FOOTER)
            ));
            return;
        }
        if data < footer_at {
            self.leak(data, footer_at, "between the data and the footer");
        }
        self.used_end = Some(data);
        self.report.image_end_offset = data + FOOTER;
    }

    /// A dynamic or differencing disk.
    fn dynamic(&mut self, file: &Arc<EngineFile>, backing: &BackingPolicy) -> Result<(), Error> {
        let io = VhdIo(file.clone());
        let Some(header) = self.header(&io)? else {
            return Ok(());
        };
        let Some(bat) = self.bat(&io, &header)? else {
            return Ok(());
        };
        let regions = self.regions(&io, &header)?;
        let meta_end = regions
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
            .next_multiple_of(512);
        let blocks = self.blocks(&bat, &header, &regions, meta_end);
        self.leaks(&blocks, meta_end);
        if self.footer.disk_type == DiskType::Differencing {
            self.parent(&io, &header, file.path(), backing);
        }
        Ok(())
    }

    /// Reads and parses the dynamic header (`None` if that is impossible).
    fn header(&mut self, io: &VhdIo) -> Result<Option<DynHeader>, Error> {
        let at = self.footer.data_offset;
        if at
            .checked_add(HEADER_LEN as u64)
            .is_none_or(|end| end > self.size - FOOTER)
        {
            self.other(format!(
                "VHD dynamic header at {at:#x} ({HEADER_LEN} bytes) runs past the footer at the \
                 end of the file ({} bytes): the BAT and blocks were not checked",
                self.size
            ));
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        io.read_exact(at, &mut raw, "dynamic header")?;
        let header = match DynHeader::parse_unchecked(&raw) {
            Ok(h) => h,
            Err(e) => {
                self.other(format!("{}: the BAT and blocks were not checked", text(&e)));
                return Ok(None);
            }
        };
        let (stored, computed) = dynamic::checksums(&raw);
        if stored != computed {
            self.report.corrupt(format!(
                "VHD dynamic header: checksum field is {stored:#010x}, the header's bytes give \
                 {computed:#010x}"
            ));
        }
        self.header = Some(HeaderFacts {
            raw,
            checksum_ok: stored == computed,
        });
        Ok(Some(header))
    }

    /// Reads every BAT entry (`None` if the BAT cannot be read).
    fn bat(&mut self, io: &VhdIo, h: &DynHeader) -> Result<Option<Vec<u32>>, Error> {
        let size = self.footer.virtual_size();
        let needed = size.div_ceil(u64::from(h.block_size));
        self.report.total_blocks = needed;
        if needed > u64::from(h.max_entries) {
            self.other(format!(
                "VHD BAT has {} entries, the disk size of {size} bytes needs {needed}",
                h.max_entries
            ));
        }
        let bytes = u64::from(h.max_entries) * 4;
        if bytes > MAX_BAT_BYTES {
            self.report.check_errors += 1;
            self.report.note(
                FindingKind::Warning,
                format!(
                    "VHD BAT of {} entries not checked (at most {MAX_BAT_BYTES} bytes are read)",
                    h.max_entries
                ),
            );
            return Ok(None);
        }
        let end = h.table_offset.checked_add(bytes);
        if end.is_none_or(|end| end > self.size - FOOTER) {
            self.other(format!(
                "VHD BAT at {:#x} ({} entries) runs past the footer at the end of the file \
                 ({} bytes): the blocks were not checked",
                h.table_offset, h.max_entries, self.size
            ));
            return Ok(None);
        }
        let mut raw = vec![0u8; super::super::us(bytes)];
        io.read_exact(h.table_offset, &mut raw, "BAT")?;
        Ok(Some(
            raw.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

/// A metadata structure's place in the file.
pub(super) struct Region {
    name: String,
    start: u64,
    end: u64,
}

impl Region {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }
}

impl Scan {
    /// The metadata structures, each checked to lie inside the file and apart from the
    /// others (those that do not are left out of the list).
    fn regions(&mut self, io: &VhdIo, h: &DynHeader) -> Result<Vec<Region>, Error> {
        let bat_end = (h.table_offset + u64::from(h.max_entries) * 4).next_multiple_of(512);
        let mut wanted = vec![
            Region {
                name: "footer copy".into(),
                start: 0,
                end: FOOTER,
            },
            Region {
                name: "dynamic header".into(),
                start: self.footer.data_offset,
                end: self.footer.data_offset + HEADER_LEN as u64,
            },
            Region {
                name: "BAT".into(),
                start: h.table_offset,
                end: bat_end,
            },
        ];
        if let Some(end) = batmap_end(io, bat_end, self.size)? {
            wanted.push(Region {
                name: "blktap batmap".into(),
                start: bat_end,
                end,
            });
        }
        for l in &h.locators {
            let len = l.space_bytes().max(u64::from(l.len));
            wanted.push(Region {
                name: format!("parent locator {} data", String::from_utf8_lossy(&l.code)),
                start: l.offset,
                end: l.offset.saturating_add(len),
            });
        }
        let mut kept: Vec<Region> = Vec::new();
        for (n, r) in wanted.into_iter().enumerate() {
            self.first_sector_used |= n > 0 && r.overlaps(0, FOOTER);
            if r.end > self.size - FOOTER {
                self.other(format!(
                    "VHD {} at {:#x}..{:#x} runs past the footer at the end of the file ({} bytes)",
                    r.name, r.start, r.end, self.size
                ));
                continue;
            }
            if let Some(other) = kept.iter().find(|k| k.overlaps(r.start, r.end)) {
                self.other(format!(
                    "VHD {} at {:#x}..{:#x} overlaps the {} at {:#x}..{:#x}",
                    r.name, r.start, r.end, other.name, other.start, other.end
                ));
                continue;
            }
            kept.push(r);
        }
        Ok(kept)
    }
}

/// An allocated block: BAT index and file extent (bitmap and data).
pub(super) struct Block {
    index: usize,
    start: u64,
    /// Its data area (after the bitmap) starts where rustbk aligns new blocks' data.
    data_aligned: bool,
    end: u64,
}

impl Block {
    /// Whether this block starts right at `end` or after alignment padding.
    fn follows(&self, end: u64) -> bool {
        self.start == end || (self.start > end && Block::padded(end, self.start, self.data_aligned))
    }

    /// Whether the gap from `from` to a block starting at `start` is alignment padding:
    /// under 4 KiB, before a block starting on a 4 KiB boundary or whose data area does.
    fn padded(from: u64, start: u64, data_aligned: bool) -> bool {
        (start % ALIGN == 0 || data_aligned) && start - from.min(start) < ALIGN
    }
}

impl Scan {
    /// Checks every allocated block; returns them sorted by file offset.
    fn blocks(
        &mut self,
        bat: &[u32],
        h: &DynHeader,
        regions: &[Region],
        meta_end: u64,
    ) -> Vec<Block> {
        let span = h.bitmap_len() + u64::from(h.block_size);
        let align = data_align(u64::from(h.block_size));
        let mut blocks: Vec<Block> = bat
            .iter()
            .enumerate()
            .filter(|(_, e)| **e != UNUSED)
            .map(|(index, e)| {
                let start = u64::from(*e) * 512;
                Block {
                    index,
                    start,
                    data_aligned: (start + h.bitmap_len()) % align == 0,
                    end: start + span,
                }
            })
            .collect();
        self.count(&blocks);
        blocks.sort_unstable_by_key(|b| (b.start, b.index));
        let footer_at = self.size - FOOTER;
        let mut last: Option<(usize, u64)> = None;
        for b in &blocks {
            let Block {
                index: i,
                start,
                end,
                ..
            } = *b;
            if end > footer_at {
                self.other(format!(
                    "VHD block {i} at {start:#x} ({span} bytes with its bitmap) ends at {end:#x}, \
                     past the footer at {footer_at:#x}: the file is too short for it"
                ));
            }
            if let Some(r) = regions.iter().find(|r| r.overlaps(start, end)) {
                self.other(format!(
                    "VHD block {i} at {start:#x}..{end:#x} overlaps the {} at {:#x}..{:#x}",
                    r.name, r.start, r.end
                ));
                self.first_sector_used |= start < FOOTER;
            } else if start < meta_end {
                self.other(format!(
                    "VHD block {i} at {start:#x} lies among the metadata (which ends at \
                     {meta_end:#x})"
                ));
            }
            if let Some((j, prev_end)) = last.filter(|(_, e)| *e > start) {
                self.other(format!(
                    "VHD blocks {j} and {i} overlap: block {j} ends at {prev_end:#x}, block {i} \
                     starts at {start:#x}"
                ));
            }
            if last.is_none_or(|(_, e)| end > e) {
                last = Some((i, end));
            }
        }
        let used_end = last.map_or(meta_end, |(_, e)| e.max(meta_end));
        self.used_end = Some(used_end);
        self.report.image_end_offset = used_end + FOOTER;
        blocks
    }

    /// Allocated and fragmented blocks of the virtual size, in guest order.
    fn count(&mut self, blocks: &[Block]) {
        let total = super::super::us(self.report.total_blocks);
        let mut prev_end = None;
        for b in blocks.iter().filter(|b| b.index < total) {
            self.report.allocated_blocks += 1;
            if prev_end.is_some_and(|e| !b.follows(e)) {
                self.report.fragmented_blocks += 1;
            }
            prev_end = Some(b.end);
        }
    }

    /// Space after the metadata that no block uses (alignment gaps aside), up to the footer.
    fn leaks(&mut self, blocks: &[Block], meta_end: u64) {
        let footer_at = self.size - FOOTER;
        let mut cursor = meta_end;
        for b in blocks {
            let start = b.start.min(footer_at);
            if start > cursor && !Block::padded(cursor, start, b.data_aligned) {
                self.leak(cursor, start, "between blocks");
            }
            cursor = cursor.max(b.end);
        }
        if footer_at > cursor {
            self.leak(cursor, footer_at, "before the footer at the end");
        }
    }

    /// Reads the parent locators and looks for the parent inside the allowed directories.
    fn parent(
        &mut self,
        io: &VhdIo,
        h: &DynHeader,
        path: &std::path::Path,
        backing: &BackingPolicy,
    ) {
        let names = match locator::candidates(io, h) {
            Ok(names) => names,
            Err(e) => {
                self.other(text(&e));
                return;
            }
        };
        let Some(first) = names.first() else {
            self.other(
                "differencing VHD names no parent (no parent locator, no parent name)".into(),
            );
            return;
        };
        self.report.backing_filename = Some(first.clone());
        let outcome = find_parent(&names, h, path, backing);
        if let Err(why) = outcome {
            self.report.note(FindingKind::Warning, why);
        }
    }
}

/// The first candidate that exists inside the allowed directories, checked to carry the
/// unique id the child records; `Err` says why none was found.
fn find_parent(
    names: &[String],
    h: &DynHeader,
    path: &std::path::Path,
    backing: &BackingPolicy,
) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let path = real.as_path();
    let confinement = Confinement::new(backing, path).map_err(|e| full(&e))?;
    let mut tried = Vec::new();
    for name in names {
        let name = PathBuf::from(name);
        let named = Named {
            image: path,
            name: &name,
        };
        let located = match confinement.locate(&named) {
            Ok(p) => p,
            Err(e) => {
                tried.push(full(&e));
                continue;
            }
        };
        let file = EngineFile::open(&located, Access::ForceShare, crate::CacheMode::Writeback)
            .map_err(|e| full(&e))?;
        let id = super::super::read_footer(&file)
            .map_err(|e| full(&e))?
            .unique_id;
        if id != h.parent_id {
            return Err(format!(
                "parent {} found, but its unique id is not the one this disk records (the \
                 parent was changed or replaced)",
                located.display()
            ));
        }
        return Ok(located);
    }
    Err(format!(
        "parent not found inside the allowed directories ({})",
        tried.join("; ")
    ))
}

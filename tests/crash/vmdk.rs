//! Simulated power failures of a VMDK child (monolithicSparse over a flat parent holding a
//! pattern) written by rustbk: a recorded workload of writes and flushes is replayed up to
//! random cut points (the durable prefix, then a random subset of the later writes, some torn).
//! Every crashed image must pass `qemu-img check` and read, through qemu-img and through
//! rustbk, a generation of every block the guest may see after the crash. The same log with
//! the fdatasync between a new grain and its table entry taken out (an allocation in the wrong
//! order) must be caught.
//!
//! A second child has no grain tables at all (directories of zeros, small tables), so the
//! workload allocates a table, and its redundant copy, every 512 KiB: cuts land on every
//! table allocation, and a log whose directory entries were written right after the zeroed
//! table (before an fdatasync made it durable) must be caught.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_blkfront::workload::fill_pattern;
use rustbk_formats::vmdk::create::{self, Parent, SparseLayout, Subformat};
use rustbk_formats::{CacheMode, Format, ImageQueue, IoOp, OpenOptions, SharedBuf, open_image};

use crate::model::{BLOCK, Change, Model};
use crate::qemu;
use crate::recorder::{self, Event, Recorder};
use crate::rng::{self, Rng};

const DISK: u64 = 8 << 20;
const OPS: usize = 250;
const CUTS: usize = 25;

/// An op in flight: its tag, the blocks and generation of a write (`None`: a flush), and the
/// acknowledged positions when a flush was submitted.
type InFlight = (u64, Option<(usize, usize, u32)>, Vec<u32>);

struct Recording {
    initial: Vec<u8>,
    events: Vec<Event>,
    /// (recorder length when the flush completed, acknowledged positions at its submission).
    flushes: Vec<(usize, Vec<u32>)>,
    model: Model,
}

/// base.vmdk (monolithicFlat, a pattern in its first 3/4) and child.vmdk over it, laid out
/// as `layout` says.
fn images(dir: &Path, layout: &SparseLayout) -> Vec<u8> {
    let base = dir.join("base.vmdk");
    create::create(&base, DISK, Subformat::MonolithicFlat, None).expect("base");
    let mut content = vec![0u8; DISK as usize];
    fill_pattern(&mut content[..(DISK as usize) * 3 / 4], 0, 0x00ba_5e00);
    std::fs::write(dir.join("base-flat.vmdk"), &content).expect("base data");
    let cid = create::describe(&base).expect("base").cid;
    let parent = Parent {
        hint: "base.vmdk".to_owned(),
        cid,
    };
    create::create_with(
        &dir.join("child.vmdk"),
        DISK,
        Subformat::MonolithicSparse,
        Some(&parent),
        layout,
    )
    .expect("child");
    content
}

fn record(image: &Path, seed: u64) -> Recording {
    let initial = std::fs::read(image).expect("initial");
    let recorder = Arc::new(Recorder::default());
    let opts = OpenOptions {
        cache: CacheMode::None,
        recorder: Some(recorder.clone()),
        ..OpenOptions::default()
    };
    let img = open_image(image, Format::Vmdk, &opts).expect("open");
    let mut q = img.open_queue(8).expect("queue");
    let mut rng = Rng::new(seed);
    let mut model = Model::new(DISK as usize / BLOCK, false);
    let mut busy = vec![false; DISK as usize / BLOCK];
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut flushes = Vec::new();
    let (mut issued, mut tag) = (0, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while issued < OPS || !inflight.is_empty() {
        while issued < OPS && inflight.len() < 8 {
            tag += 1;
            issued += 1;
            if rng.chance(1, 5) {
                q.submit(IoOp::Flush, tag).expect("flush");
                inflight.push((tag, None, model.acked()));
                continue;
            }
            let count = rng.range(1, 16) as usize;
            let first = rng.index(busy.len() - count + 1);
            if busy[first..first + count].iter().any(|b| *b) {
                issued -= 1;
                break;
            }
            busy[first..first + count].fill(true);
            let generation = model.submit(first, count, Change::Data);
            let offset = (first * BLOCK) as u64;
            let mut data = vec![0u8; count * BLOCK];
            fill_pattern(&mut data, offset, generation);
            let buf = SharedBuf::new(data.len());
            assert!(buf.copy_in(0, &data));
            q.submit(
                IoOp::Write {
                    offset,
                    bufs: Box::new(buf),
                },
                tag,
            )
            .expect("write");
            inflight.push((tag, Some((first, count, generation)), Vec::new()));
        }
        q.commit().expect("commit");
        q.wait(Some(Duration::from_secs(1))).expect("wait");
        let mut done = Vec::new();
        q.reap(&mut done);
        for c in done {
            assert!(c.result.is_ok(), "op {} failed: {:?}", c.tag, c.result);
            let i = inflight
                .iter()
                .position(|(t, _, _)| *t == c.tag)
                .expect("tag");
            match inflight.swap_remove(i) {
                (_, Some((first, count, generation)), _) => {
                    model.ack(first, count, generation);
                    busy[first..first + count].fill(false);
                }
                (_, None, snap) => {
                    model.flushed(&snap);
                    flushes.push((recorder.len(), snap));
                }
            }
        }
        assert!(Instant::now() < deadline, "workload stuck");
    }
    drop(q);
    drop(img);
    Recording {
        initial,
        events: recorder.events(),
        flushes,
        model,
    }
}

/// Reads the crashed child through qemu-img and through rustbk; both must match the model.
fn check_cut(
    rec: &Recording,
    cut: usize,
    file: &[u8],
    dir: &Path,
    parent: &[u8],
) -> Result<(), String> {
    let path = dir.join("crashed.vmdk");
    std::fs::write(&path, file).expect("crashed image");
    let out = qemu::run(&["check", "-f", "vmdk", &path.display().to_string()]);
    if !out.status.success() {
        return Err(format!(
            "qemu-img check: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let never = vec![0u32; rec.model.blocks()];
    let floor = rec
        .flushes
        .iter()
        .rev()
        .find(|f| f.0 <= cut)
        .map_or(never.as_slice(), |f| f.1.as_slice());
    let raw = dir.join("crashed.raw");
    let _ = std::fs::remove_file(&raw);
    qemu::ok(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        &path.display().to_string(),
        &raw.display().to_string(),
    ]);
    let disk = std::fs::read(&raw).expect("raw");
    rec.model
        .verify(floor, &disk, Some(parent))
        .map_err(|e| format!("qemu-img reads: {e}"))?;
    let opts = OpenOptions {
        read_only: true,
        cache: CacheMode::Writeback,
        ..OpenOptions::default()
    };
    let img = open_image(&path, Format::Vmdk, &opts).map_err(|e| format!("rustbk open: {e}"))?;
    let mut q: Box<dyn ImageQueue> = img.open_queue(4).expect("queue");
    let ours = rustbk_formats::suite::read_at(&mut *q, 0, DISK as usize)
        .map_err(|e| format!("rustbk read: {e}"))?;
    rec.model
        .verify(floor, &ours, Some(parent))
        .map_err(|e| format!("rustbk reads: {e}"))
}

/// Replays `CUTS` random crashes of `events`; the first failure, if any.
fn replay(
    rec: &Recording,
    events: &[Event],
    dir: &Path,
    parent: &[u8],
    rng: &mut Rng,
) -> Result<usize, String> {
    let len = events.len() as u64;
    let cuts: Vec<usize> = (0..CUTS).map(|_| rng.range(0, len) as usize).collect();
    replay_cuts(rec, (events, &cuts), dir, parent, rng)
}

/// Replays crashes of `events` at each of `cuts`; the first failure, if any.
fn replay_cuts(
    rec: &Recording,
    (events, cuts): (&[Event], &[usize]),
    dir: &Path,
    parent: &[u8],
    rng: &mut Rng,
) -> Result<usize, String> {
    let mut torn = 0;
    for &cut in cuts {
        let cut = cut.min(events.len());
        let durable = recorder::durable_prefix(events, cut);
        let mut file = rec.initial.clone();
        for e in &events[..durable] {
            recorder::apply(&mut file, e);
        }
        for e in &events[durable..cut] {
            match rng.range(0, 5) {
                0 | 1 => {}
                2 => torn += recorder::apply_torn(&mut file, e, rng),
                _ => recorder::apply(&mut file, e),
            }
        }
        check_cut(rec, cut, &file, dir, parent)
            .map_err(|e| format!("cut at {cut} (durable {durable}): {e}"))?;
    }
    Ok(torn)
}

/// The log of a writer that skipped the fdatasync between a new grain and its table entry:
/// every sync followed by a 4-byte metadata write becomes a no-op.
fn without_allocation_syncs(events: &[Event]) -> (Vec<Event>, usize) {
    let mut out = events.to_vec();
    let mut removed = 0;
    for i in 0..out.len().saturating_sub(1) {
        let entry_next = matches!(&events[i + 1], Event::Write { data, .. } if data.len() == 4);
        if matches!(events[i], Event::Sync { .. }) && entry_next {
            out[i] = Event::Zero { offset: 0, len: 0 };
            removed += 1;
        }
    }
    (out, removed)
}

#[test]
fn vmdk_survives_power_failure_and_a_broken_allocation_order_is_caught() {
    let seed = rng::seed("vmdk replay");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = images(dir.path(), &SparseLayout::default());
    let rec = record(&dir.path().join("child.vmdk"), rng.next_u64());
    let start = Instant::now();
    let torn =
        replay(&rec, &rec.events, dir.path(), &parent, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "vmdk replay: {} events, {} flushes, {CUTS} cuts, {torn} torn sectors, 0 failures, {:?}",
        rec.events.len(),
        rec.flushes.len(),
        start.elapsed()
    );
    let (broken, removed) = without_allocation_syncs(&rec.events);
    assert!(
        removed > 10,
        "the workload allocated grains ({removed} allocation syncs)"
    );
    let mut caught = None;
    for round in 0..5 {
        if let Err(e) = replay(&rec, &broken, dir.path(), &parent, &mut rng) {
            caught = Some((round, e));
            break;
        }
    }
    let (round, e) = caught.expect("replays of the log without allocation syncs found no damage");
    println!("broken order caught in round {round}: {e}");
}

/// Byte ranges of the child's grain directory and redundant directory.
fn directory_ranges(image: &[u8]) -> Vec<(u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().expect("8 bytes"));
    let (capacity, grain, gtes) = (word(12), word(20), u64::from(word(44) as u32));
    let len = (capacity / grain).div_ceil(gtes) * 4;
    [word(56), word(48)]
        .iter()
        .filter(|&&s| s != 0)
        .map(|&s| (s * 512, s * 512 + len))
        .collect()
}

/// Positions of the directory entry writes in `events`.
fn directory_writes(events: &[Event], dirs: &[(u64, u64)]) -> Vec<usize> {
    let in_dir = |o: u64| dirs.iter().any(|&(s, e)| (s..e).contains(&o));
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Write { offset, data } if data.len() == 4 && in_dir(*offset)))
        .map(|(i, _)| i)
        .collect()
}

/// The log of a writer that wrote each new table's directory entry right after the zeroed
/// table, before an fdatasync made the table durable (sync marks moved to match), and the
/// positions of the moved entries whose table grew the file (`initial` bytes long at first).
/// Only those can do harm: a table placed in the room below a later grain lies in a hole,
/// which reads as zeros whether or not the table's write survived.
fn directory_entries_early(
    events: &[Event],
    dirs: &[(u64, u64)],
    initial: u64,
) -> (Vec<Event>, Vec<usize>) {
    let mut after: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut moved = HashSet::new();
    for i in directory_writes(events, dirs) {
        let Event::Write { data, .. } = &events[i] else {
            continue;
        };
        let table = u64::from(u32::from_le_bytes(data[..4].try_into().expect("4 bytes"))) * 512;
        let zeroed = events[..i].iter().rposition(
            |e| matches!(e, Event::Write { offset, data } if *offset == table && data.len() >= 512),
        );
        if let Some(j) = zeroed {
            after.entry(j).or_default().push(i);
            moved.insert(i);
        }
    }
    let grew = grew_file(events, initial);
    let mut out = Vec::with_capacity(events.len());
    let mut new_pos = vec![0; events.len() + 1];
    let mut early = Vec::new();
    for (k, e) in events.iter().enumerate() {
        new_pos[k] = out.len();
        if moved.contains(&k) {
            continue;
        }
        out.push(e.clone());
        for &i in after.get(&k).into_iter().flatten() {
            if grew.contains(&k) {
                early.push(out.len());
            }
            out.push(events[i].clone());
        }
    }
    new_pos[events.len()] = out.len();
    for e in &mut out {
        if let Event::Sync { mark } = e {
            *mark = new_pos[*mark];
        }
    }
    (out, early)
}

/// Positions of the writes in `events` that start at or past the end of the file so far.
fn grew_file(events: &[Event], initial: u64) -> HashSet<usize> {
    let mut end = initial;
    let mut out = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::Write { offset, data } = e {
            if *offset >= end {
                out.insert(i);
            }
            end = end.max(offset + data.len() as u64);
        }
    }
    out
}

#[test]
fn vmdk_table_allocation_survives_power_failure_and_an_early_directory_entry_is_caught() {
    let seed = rng::seed("vmdk table replay");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = SparseLayout {
        gtes_per_gt: 8,
        preallocate_tables: false,
        ..SparseLayout::default()
    };
    let parent = images(dir.path(), &layout);
    let rec = record(&dir.path().join("child.vmdk"), rng.next_u64());
    let dirs = directory_ranges(&rec.initial);
    let writes = directory_writes(&rec.events, &dirs);
    assert!(
        writes.len() >= 2 * 12,
        "the workload allocated most of the 16 tables and their copies ({} entries)",
        writes.len()
    );
    let start = Instant::now();
    let mut torn =
        replay(&rec, &rec.events, dir.path(), &parent, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    let at_tables: Vec<usize> = writes.iter().flat_map(|&i| [i, i + 1]).collect();
    torn += replay_cuts(
        &rec,
        (&rec.events, &at_tables),
        dir.path(),
        &parent,
        &mut rng,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "vmdk table replay: {} events, {} flushes, {} directory entry writes, {} cuts, {torn} \
         torn sectors, 0 failures, {:?}",
        rec.events.len(),
        rec.flushes.len(),
        writes.len(),
        CUTS + at_tables.len(),
        start.elapsed()
    );
    let (broken, early) = directory_entries_early(&rec.events, &dirs, rec.initial.len() as u64);
    assert!(
        early.len() >= 2,
        "the first table and its copy grew the file ({early:?})"
    );
    let mut caught = None;
    for round in 0..5 {
        let cuts: Vec<usize> = (0..CUTS)
            .map(|_| early[rng.index(early.len())] + 1 + rng.range(0, 3) as usize)
            .collect();
        if let Err(e) = replay_cuts(&rec, (&broken, &cuts), dir.path(), &parent, &mut rng) {
            caught = Some((round, e));
            break;
        }
    }
    let (round, e) =
        caught.expect("replays of the log with early directory entries found no damage");
    println!("early directory entries caught in round {round}: {e}");
}

//! The metadata side of `rustbk thin bench`: snapshot time of a live volume, metadata space per
//! TiB mapped, and thin_check's time on a pool with a million mappings, rustbk's and the same
//! pool built by thin_restore.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rustbk_blkfront::rng::Rng;
use rustbk_formats::engine::Access;
use rustbk_formats::{BlockImage, EngineFile, ImageQueue, IoOp, SharedBuf};
use rustbk_thin::dir::{Devices, PoolDir};
use rustbk_thin::interchange;
use rustbk_thin::meta::{Geometry, Metadata};
use rustbk_thin::pool::{Pool, PoolOptions, VolumeSpec};
use rustbk_thin::volume::{ThinVolume, VolumeOptions};
use serde::Serialize;

const MAPPINGS: u64 = 1 << 20;
const SNAPSHOTS: u64 = 5;

/// What the metadata measurements found.
#[derive(Debug, Serialize)]
pub struct MetaResults {
    /// Milliseconds per live snapshot of a 1 GiB volume, each one.
    pub snapshot_ms_1g: Vec<f64>,
    /// Milliseconds per live snapshot of a 1 TiB volume, each one.
    pub snapshot_ms_1t: Vec<f64>,
    /// Metadata bytes per TiB mapped (64 KiB blocks, mapped in random order).
    pub metadata_bytes_per_tib: u64,
    /// Seconds of thin_check 0.9 on rustbk's pool of a million mappings, and on the same pool
    /// made by thin_restore 0.9.
    pub thin_check_s: (f64, f64),
    /// The same with thin_check 1.1.
    pub thin_check_11_s: (f64, f64),
}

/// Runs every metadata measurement in `dir`.
pub fn measure(dir: &Path) -> anyhow::Result<MetaResults> {
    std::fs::create_dir_all(dir)?;
    let snapshot_ms_1g = snapshot_times(&dir.join("snap-1g"), 1 << 30)?;
    let snapshot_ms_1t = snapshot_times(&dir.join("snap-1t"), 1 << 40)?;
    let (metadata_bytes_per_tib, meta) = million_mappings(dir)?;
    let restored = dir.join("restored");
    let xml = dir.join("pool.xml");
    let mut md = open_metadata(&meta)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&xml)?);
    rustbk_thin::xml::write(&interchange::dump(&mut md)?, &mut out)?;
    drop(out);
    std::fs::File::create(&restored)?.set_len(std::fs::metadata(&meta)?.len())?;
    run_tool(
        Path::new("/usr/sbin/thin_restore"),
        &[
            "-i".as_ref(),
            xml.as_os_str(),
            "-o".as_ref(),
            restored.as_os_str(),
        ],
    )?;
    let new_tools = thin_tools_11()?;
    let v09 = Path::new("/usr/sbin/thin_check");
    let v11 = new_tools.join("thin_check");
    Ok(MetaResults {
        snapshot_ms_1g,
        snapshot_ms_1t,
        metadata_bytes_per_tib,
        thin_check_s: (timed_check(v09, &meta)?, timed_check(v09, &restored)?),
        thin_check_11_s: (timed_check(&v11, &meta)?, timed_check(&v11, &restored)?),
    })
}

/// Writes volume `id` of `pool` end to end in 1 MiB writes (every block provisioned).
pub fn fill_volume(pool: &Pool, id: u64, size: u64) -> anyhow::Result<()> {
    let vol = ThinVolume::open_local(pool, id, VolumeOptions::default())?;
    let mut q = vol.open_queue(8)?;
    let chunk = 1u64 << 20;
    let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8 | 1).collect();
    let mut done = Vec::new();
    let mut offset = 0;
    while offset < size {
        if q.in_flight() >= 8 {
            q.wait(None)?;
            reap_ok(&mut *q, &mut done)?;
            continue;
        }
        let len = chunk.min(size - offset);
        let buf = SharedBuf::new(usize::try_from(len)?);
        buf.copy_in(0, &data[..usize::try_from(len)?]);
        q.submit(
            IoOp::Write {
                offset,
                bufs: Box::new(buf),
            },
            offset,
        )?;
        q.commit()?;
        offset += len;
    }
    drain(&mut *q, &mut done)?;
    q.submit(IoOp::Flush, u64::MAX)?;
    drain(&mut *q, &mut done)
}

fn drain(q: &mut dyn ImageQueue, done: &mut Vec<rustbk_formats::Completion>) -> anyhow::Result<()> {
    while q.in_flight() > 0 {
        q.wait(None)?;
        reap_ok(q, done)?;
    }
    Ok(())
}

fn reap_ok(
    q: &mut dyn ImageQueue,
    done: &mut Vec<rustbk_formats::Completion>,
) -> anyhow::Result<()> {
    q.reap(done);
    for c in done.drain(..) {
        c.result.with_context(|| format!("op {} failed", c.tag))?;
    }
    Ok(())
}

/// Live snapshots of a volume of `size` while a writer keeps 4 KiB random writes in flight
/// through the volume's data path; the milliseconds of each.
fn snapshot_times(path: &Path, size: u64) -> anyhow::Result<Vec<f64>> {
    let devices = Devices::Files {
        metadata: 64 << 20,
        data: 4 << 30,
    };
    let pool = Arc::new(PoolDir::new(path).create(&devices, 64 << 10, PoolOptions::default())?);
    pool.create_volume(
        0,
        VolumeSpec {
            size,
            ..VolumeSpec::default()
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || random_writes(&pool, size, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for i in 1..=SNAPSHOTS {
        let start = Instant::now();
        pool.snapshot(0, i, "bench")?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    ensure!(
        writes > 0,
        "the writer wrote nothing while the snapshots were taken"
    );
    Ok(times)
}

/// 4 KiB random writes, 16 in flight, until `stop`; returns how many completed.
fn random_writes(pool: &Pool, size: u64, stop: &AtomicBool) -> anyhow::Result<u64> {
    let vol = ThinVolume::open_local(pool, 0, VolumeOptions::default())?;
    let mut q = vol.open_queue(16)?;
    let mut rng = Rng::new(7);
    let (mut done, mut writes) = (Vec::new(), 0u64);
    // Most writes go to a small hot set, the rest anywhere: both provisioned and new blocks.
    let hot = (64u64 << 20).min(size) / 4096;
    while !stop.load(Ordering::SeqCst) {
        while q.in_flight() < 16 {
            let slot = if rng.below(4) == 0 {
                rng.below(size / 4096)
            } else {
                rng.below(hot)
            };
            let buf = SharedBuf::new(4096);
            buf.copy_in(0, &[0x5a; 4096]);
            q.submit(
                IoOp::Write {
                    offset: slot * 4096,
                    bufs: Box::new(buf),
                },
                slot,
            )?;
        }
        q.commit()?;
        q.wait(Some(Duration::from_millis(50)))?;
        q.reap(&mut done);
        writes += done.drain(..).filter(|c| c.result.is_ok()).count() as u64;
    }
    Ok(writes)
}

/// A metadata file with one device of a million mappings, made in random order with data
/// blocks handed out in turn (as random first writes make them); returns the metadata bytes
/// this needs per TiB mapped, and the file.
fn million_mappings(dir: &Path) -> anyhow::Result<(u64, std::path::PathBuf)> {
    let meta = dir.join("million-meta");
    std::fs::File::create(&meta)?.set_len(1 << 30)?;
    let file = Arc::new(EngineFile::open(
        &meta,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )?);
    let geometry = Geometry {
        data_block_size: 128,
        nr_data_blocks: MAPPINGS,
    };
    let mut md = Metadata::create(file, geometry)?;
    md.create_thin(0)?;
    let base = md.metadata_refs().nr_allocated();
    let mut order: Vec<u64> = (0..MAPPINGS).collect();
    let mut rng = Rng::new(11);
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1))?;
        order.swap(i, j);
    }
    for vblock in order {
        let block = md.alloc_data()?;
        md.insert(0, vblock, block)?;
    }
    md.commit()?;
    let used = md.metadata_refs().nr_allocated().saturating_sub(base) * 4096;
    let mapped_bytes = MAPPINGS * (64 << 10);
    let per_tib = u128::from(used) * (1u128 << 40) / u128::from(mapped_bytes);
    Ok((u64::try_from(per_tib).unwrap_or(u64::MAX), meta))
}

fn open_metadata(path: &Path) -> anyhow::Result<Metadata> {
    let file = Arc::new(EngineFile::open(
        path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )?);
    Ok(Metadata::open(file, |_| MAPPINGS)?)
}

fn thin_tools_11() -> anyhow::Result<std::path::PathBuf> {
    let cache = std::env::var("RUSTBK_CACHE").unwrap_or_else(|_| "/var/cache/rustbk".into());
    let dir = Path::new(&cache).join("thin-tools/current");
    ensure!(
        dir.join("thin_check").exists(),
        "thin-provisioning-tools 1.1 is missing: run scripts/setup.sh"
    );
    Ok(dir)
}

fn run_tool(tool: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("{} does not run: run scripts/setup.sh", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn timed_check(tool: &Path, meta: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    run_tool(tool, &[meta.as_os_str()])?;
    Ok(start.elapsed().as_secs_f64())
}

/// Milliseconds for people: one decimal, spaces between.
pub fn ms_list(times: &[f64]) -> String {
    let each: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
    each.join(" ")
}

/// Prints the results for people.
pub fn print_human(r: &MetaResults) {
    println!(
        "live snapshot, 1 GiB volume (ms): {}",
        ms_list(&r.snapshot_ms_1g)
    );
    println!(
        "live snapshot, 1 TiB volume (ms): {}",
        ms_list(&r.snapshot_ms_1t)
    );
    println!(
        "metadata per TiB mapped: {} MiB",
        r.metadata_bytes_per_tib >> 20
    );
    println!(
        "thin_check 0.9 on 1M mappings: {:.2} s (rustbk pool), {:.2} s (thin_restore pool)",
        r.thin_check_s.0, r.thin_check_s.1
    );
    println!(
        "thin_check 1.1 on 1M mappings: {:.2} s (rustbk pool), {:.2} s (thin_restore pool)",
        r.thin_check_11_s.0, r.thin_check_11_s.1
    );
}

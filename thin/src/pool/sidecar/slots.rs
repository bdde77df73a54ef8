//! Two slot files written in turn, so that a record set is replaced with one fdatasync and
//! no file system metadata change: `<base>.0` and `<base>.1`, each holding a header and a
//! body, and zero-filled to a multiple of [`GRAIN`] so that a write in place allocates
//! nothing. A store writes the slot with the older generation and syncs it; a crash during
//! the write leaves a slot whose checksum fails, and the other slot, the previous records,
//! is read.
//!
//! Header (little endian): magic `RBKVOLS1`, generation (u64), body length (u64), crc32c of
//! the generation, length and body (u32), four zero bytes; then the body.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RBKVOLS1";
const HEADER: usize = 32;
/// Slot files grow in steps of this many bytes.
const GRAIN: u64 = 64 << 10;
/// The largest body read (a hostile or damaged slot is refused, not loaded).
const MAX_BODY: u64 = 64 << 20;

/// What the slots hold.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The body of the newest valid slot.
    pub best: Option<Vec<u8>>,
    /// Some slot holds something that is not a valid record set.
    pub damaged: bool,
}

/// The two slot files of `base`.
pub(crate) fn paths(base: &Path) -> [PathBuf; 2] {
    ["0", "1"].map(|n| {
        let mut name = base.as_os_str().to_owned();
        name.push(".");
        name.push(n);
        PathBuf::from(name)
    })
}

/// Reads both slots.
pub(crate) fn load(base: &Path) -> io::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut newest = 0;
    for path in paths(base) {
        match read_slot(&path)? {
            Slot::Absent => {}
            Slot::Damaged => loaded.damaged = true,
            Slot::Valid { generation, body } if generation > newest => {
                newest = generation;
                loaded.best = Some(body);
            }
            Slot::Valid { .. } => {}
        }
    }
    Ok(loaded)
}

/// Writes `body` to the older slot with the next generation, and syncs it.
pub(crate) fn store(base: &Path, body: &[u8]) -> io::Result<()> {
    let [first, second] = paths(base);
    let generation_of = |p: &Path| -> io::Result<u64> {
        Ok(match read_slot(p)? {
            Slot::Valid { generation, .. } => generation,
            Slot::Absent | Slot::Damaged => 0,
        })
    };
    let (a, b) = (generation_of(&first)?, generation_of(&second)?);
    let target = if a <= b { &first } else { &second };
    let generation = a
        .max(b)
        .checked_add(1)
        .ok_or_else(|| io::Error::other("generation"))?;
    write_slot(target, generation, body)
}

enum Slot {
    Absent,
    Damaged,
    Valid { generation: u64, body: Vec<u8> },
}

fn read_slot(path: &Path) -> io::Result<Slot> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slot::Absent),
        Err(e) => return Err(e),
    };
    let mut header = [0u8; HEADER];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Slot::Damaged),
        Err(e) => return Err(e),
    }
    if header.iter().all(|&b| b == 0) {
        return Ok(Slot::Absent);
    }
    let (magic, generation, len, crc) = parse_header(&header);
    if magic != MAGIC || len > MAX_BODY {
        return Ok(Slot::Damaged);
    }
    let Ok(len) = usize::try_from(len) else {
        return Ok(Slot::Damaged);
    };
    let mut body = vec![0u8; len];
    match file.read_exact(&mut body) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Slot::Damaged),
        Err(e) => return Err(e),
    }
    if checksum(generation, &body) != crc {
        return Ok(Slot::Damaged);
    }
    Ok(Slot::Valid { generation, body })
}

fn parse_header(h: &[u8; HEADER]) -> (&[u8], u64, u64, u32) {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&h[24..28]);
    (&h[..8], u64_at(8), u64_at(16), u32::from_le_bytes(crc))
}

fn checksum(generation: u64, body: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&generation.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &(body.len() as u64).to_le_bytes());
    crc32c::crc32c_append(crc, body)
}

fn encode(generation: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(generation, body).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(body);
    out
}

/// Writes a slot in place. A slot file made now, or grown, is zero-filled first (its blocks
/// allocated, so later writes change no file system metadata); a new file's name is made
/// durable by syncing its folder.
fn write_slot(path: &Path, generation: u64, body: &[u8]) -> io::Result<()> {
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let bytes = encode(generation, body);
    let needed = (bytes.len() as u64).div_ceil(GRAIN) * GRAIN;
    let len = file.metadata()?.len();
    if len < needed {
        let zeros = vec![0u8; usize::try_from(needed - len).map_err(io::Error::other)?];
        file.write_all_at(&zeros, len)?;
    }
    file.write_all_at(&bytes, 0)?;
    file.sync_data()?;
    if created {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("meta.volumes");
        (dir, base)
    }

    #[test]
    fn stores_alternate_between_the_slots_and_the_newest_is_read() {
        let (_dir, base) = base();
        assert!(load(&base).unwrap().best.is_none());
        for n in 1..=5u8 {
            store(&base, &[n; 100]).unwrap();
            assert_eq!(load(&base).unwrap().best, Some(vec![n; 100]));
        }
        let [a, b] = paths(&base);
        assert_eq!(std::fs::metadata(&a).unwrap().len(), GRAIN);
        assert_eq!(std::fs::metadata(&b).unwrap().len(), GRAIN);
        let Slot::Valid { generation: ga, .. } = read_slot(&a).unwrap() else {
            panic!()
        };
        let Slot::Valid { generation: gb, .. } = read_slot(&b).unwrap() else {
            panic!()
        };
        assert_eq!((ga, gb), (5, 4));
    }

    #[test]
    fn a_torn_write_leaves_the_previous_records() {
        let (_dir, base) = base();
        store(&base, b"first").unwrap();
        store(&base, b"second").unwrap();
        // The next store goes to slot 0 (generation 1): tear it half-way.
        let [a, _] = paths(&base);
        let torn = encode(3, b"third, never finished");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .write_all_at(&torn[..HEADER + 5], 0)
            .unwrap();
        let loaded = load(&base).unwrap();
        assert_eq!(loaded.best.as_deref(), Some(&b"second"[..]));
        assert!(loaded.damaged);
        store(&base, b"fourth").unwrap();
        assert_eq!(load(&base).unwrap().best.as_deref(), Some(&b"fourth"[..]));
    }

    #[test]
    fn a_slot_larger_than_a_grain_grows_and_a_hostile_length_is_refused() {
        let (_dir, base) = base();
        let big = vec![7u8; 2 * usize::try_from(GRAIN).unwrap()];
        store(&base, &big).unwrap();
        assert_eq!(load(&base).unwrap().best, Some(big));
        let [a, _] = paths(&base);
        let mut header = encode(9, b"x");
        header[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&a, &header).unwrap();
        let loaded = load(&base).unwrap();
        assert!(loaded.damaged && loaded.best.is_none());
    }
}

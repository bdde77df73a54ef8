//! Image locking that QEMU understands: open file description (OFD) read locks on single
//! bytes, at the offsets QEMU's `block/file-posix.c` uses for its block permissions.
//!
//! A user of an image holds byte `100 + i` for every permission `i` it has (consistent read,
//! write, unchanged write, resize: QEMU's `BLK_PERM_*` bits 0..3) and byte `200 + i` for every
//! permission it refuses to share with others. Taking a permission needs byte `200 + i` free
//! of other holders; refusing to share one needs byte `100 + i` free. The bytes are taken
//! first and checked afterwards (`F_OFD_GETLK` ignores the caller's own locks), so of two
//! conflicting users racing for an image at least one sees the other. OFD locks belong to the
//! open file description: two opens conflict even in one process, and the locks go away when
//! the file is closed, also when the process dies.
//!
//! The modes follow what QEMU 10 takes (seen in `/proc/locks`): `qemu-io` writing a qcow2
//! image holds 100, 101, 103 and 201, 203, as [`LockMode::Writer`] does for every format;
//! a qcow2 reader (a backing file, `qemu-img info`) holds 100 and 201, 203, as
//! [`LockMode::Reader`]; `-U` holds 100 only, as [`LockMode::SharedReader`]. QEMU is more
//! lenient with raw images: its raw readers share writing, and a raw writer in `qemu-io`
//! (not a guest) shares it too. Here every reader refuses writers unless it shares (`-U`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{FcntlArg, fcntl};

use crate::error::Error;

/// First byte of the "holds permission" range.
const PERM_BASE: i64 = 100;
/// First byte of the "does not share permission" range.
const SHARED_BASE: i64 = 200;

/// One of QEMU's block permissions (the bit index of its `BLK_PERM_*` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// `BLK_PERM_CONSISTENT_READ` (0x01): the contents are a consistent disk.
    ConsistentRead = 0,
    /// `BLK_PERM_WRITE` (0x02): changing the visible contents.
    Write = 1,
    /// `BLK_PERM_WRITE_UNCHANGED` (0x04): writes that leave the contents as they are.
    WriteUnchanged = 2,
    /// `BLK_PERM_RESIZE` (0x08): changing the size.
    Resize = 3,
}

impl Perm {
    const ALL: [Perm; 4] = [
        Perm::ConsistentRead,
        Perm::Write,
        Perm::WriteUnchanged,
        Perm::Resize,
    ];

    /// The name QEMU prints for the permission.
    pub fn name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write unchanged",
            Perm::Resize => "resize",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The lock byte held by users that have this permission.
    pub fn held_byte(self) -> i64 {
        PERM_BASE + self as i64
    }

    /// The lock byte held by users that do not share this permission.
    pub fn unshared_byte(self) -> i64 {
        SHARED_BASE + self as i64
    }
}

/// How an open image is used, and so which lock bytes it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// A writer, like a running QEMU guest on a qcow2 image: holds consistent read, write and
    /// resize; nobody else may write or resize.
    Writer,
    /// A reader that needs the contents to stay put (a backing file, a read-only guest disk,
    /// an image being inspected or copied): holds consistent read; nobody else may write or
    /// resize.
    Reader,
    /// A reader that tolerates changes (`-U`/`--force-share`): holds consistent read and
    /// shares everything.
    SharedReader,
    /// One of several writers that share writing and nothing else (the data device of a thin
    /// pool, whose blocks one owner hands out): holds consistent read and write; nobody may
    /// resize, an exclusive writer or a reader that needs stable contents is refused.
    SharedWriter,
}

impl LockMode {
    /// The permissions this mode holds.
    fn held(self) -> u8 {
        match self {
            LockMode::Writer => Perm::ConsistentRead.bit() | Perm::Write.bit() | Perm::Resize.bit(),
            LockMode::SharedWriter => Perm::ConsistentRead.bit() | Perm::Write.bit(),
            LockMode::Reader | LockMode::SharedReader => Perm::ConsistentRead.bit(),
        }
    }

    /// The permissions this mode refuses to share.
    fn unshared(self) -> u8 {
        match self {
            LockMode::Writer | LockMode::Reader => Perm::Write.bit() | Perm::Resize.bit(),
            LockMode::SharedWriter => Perm::Resize.bit(),
            LockMode::SharedReader => 0,
        }
    }
}

/// The lock bytes of one open file, released when dropped.
///
/// The bytes are released explicitly (`F_UNLCK` on the open file description) before the
/// descriptor is closed: a child forked by another thread holds a copy of the descriptor until
/// it execs, and with a plain close the locks would live on in it for that moment.
#[derive(Debug)]
pub struct Held(File);

impl Held {
    /// The locked file.
    pub fn file(&self) -> &File {
        &self.0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let all = libc::flock {
            l_len: SHARED_BASE + 100 - PERM_BASE,
            ..byte_lock(UNLOCK, PERM_BASE)
        };
        if let Err(e) = fcntl(self.0.as_raw_fd(), FcntlArg::F_OFD_SETLK(&all)) {
            tracing::warn!(error = %e, "cannot release the image's lock bytes");
        }
    }
}

/// Takes the lock bytes of `mode` on `file` (opened from `path`), then checks that no other
/// open file holds a conflicting byte. The bytes are held until the returned [`Held`] is
/// dropped; on a conflict they are released at once.
pub fn lock(file: File, path: &Path, mode: LockMode) -> Result<Held, Error> {
    let held = Held(file);
    let io_err = |source: io::Error| Error::Open {
        path: path.to_owned(),
        source,
    };
    for perm in Perm::ALL {
        if mode.held() & perm.bit() != 0 {
            take(&held.0, perm.held_byte()).map_err(io_err)?;
        }
        if mode.unshared() & perm.bit() != 0 {
            take(&held.0, perm.unshared_byte()).map_err(io_err)?;
        }
    }
    match conflict(&held.0, mode).map_err(io_err)? {
        None => Ok(held),
        Some((perm, shared)) => Err(Error::Locked {
            path: path.to_owned(),
            perm: perm.name(),
            shared,
            byte: if shared {
                perm.held_byte()
            } else {
                perm.unshared_byte()
            },
        }),
    }
}

/// The first permission another open file holds against `mode`: `(perm, false)` if it does
/// not share a permission `mode` holds, `(perm, true)` if it holds one `mode` does not share.
fn conflict(file: &File, mode: LockMode) -> io::Result<Option<(Perm, bool)>> {
    for perm in Perm::ALL {
        if mode.held() & perm.bit() != 0 && held_elsewhere(file, perm.unshared_byte())? {
            return Ok(Some((perm, false)));
        }
    }
    for perm in Perm::ALL {
        if mode.unshared() & perm.bit() != 0 && held_elsewhere(file, perm.held_byte())? {
            return Ok(Some((perm, true)));
        }
    }
    Ok(None)
}

// struct flock keeps these in shorts; they are 0, 1 and 0 (asserted below).
#[allow(clippy::cast_possible_truncation)]
const READ_LOCK: libc::c_short = libc::F_RDLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const WRITE_LOCK: libc::c_short = libc::F_WRLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const UNLOCK: libc::c_short = libc::F_UNLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const FROM_START: libc::c_short = libc::SEEK_SET as libc::c_short;
const _: () = assert!(READ_LOCK as i32 == libc::F_RDLCK && WRITE_LOCK as i32 == libc::F_WRLCK);
const _: () = assert!(UNLOCK as i32 == libc::F_UNLCK);
const _: () = assert!(FROM_START as i32 == libc::SEEK_SET);

fn byte_lock(kind: libc::c_short, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: FROM_START,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Takes a shared (read) OFD lock on one byte.
fn take(file: &File, byte: i64) -> io::Result<()> {
    let lock = byte_lock(READ_LOCK, byte);
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&lock))?;
    Ok(())
}

/// Whether another open file holds a lock on `byte` (asked as QEMU asks: could an exclusive
/// lock be taken?).
fn held_elsewhere(file: &File, byte: i64) -> io::Result<bool> {
    let mut lock = byte_lock(WRITE_LOCK, byte);
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut lock))?;
    Ok(i32::from(lock.l_type) != libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(path: &Path, mode: LockMode) -> Result<Held, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(matches!(mode, LockMode::Writer | LockMode::SharedWriter))
            .open(path)?;
        lock(file, path, mode)
    }

    fn image() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 4096]).expect("write");
        (dir, path)
    }

    fn refused(path: &Path, mode: LockMode) -> (i64, bool) {
        match locked(path, mode) {
            Err(Error::Locked { byte, shared, .. }) => (byte, shared),
            other => panic!("{mode:?} open not refused: {other:?}"),
        }
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_closes() {
        let (_dir, path) = image();
        let first = locked(&path, LockMode::Writer).expect("first writer");
        assert_eq!(
            refused(&path, LockMode::Writer),
            (Perm::Write.unshared_byte(), false)
        );
        drop(first);
        locked(&path, LockMode::Writer).expect("writer after the first closed");
    }

    #[test]
    fn readers_share_an_image_but_exclude_a_writer() {
        let (_dir, path) = image();
        let a = locked(&path, LockMode::Reader).expect("reader a");
        let _b = locked(&path, LockMode::Reader).expect("reader b");
        assert_eq!(
            refused(&path, LockMode::Writer),
            (Perm::Write.unshared_byte(), false)
        );
        drop(a);
        assert!(
            locked(&path, LockMode::Writer).is_err(),
            "reader b still open"
        );
    }

    #[test]
    fn a_reader_is_refused_while_a_writer_has_the_image() {
        let (_dir, path) = image();
        let _w = locked(&path, LockMode::Writer).expect("writer");
        assert_eq!(
            refused(&path, LockMode::Reader),
            (Perm::Write.held_byte(), true)
        );
    }

    #[test]
    fn a_copy_of_the_descriptor_does_not_keep_the_locks_of_a_dropped_image() {
        // What a child forked by another thread holds until it execs.
        let (_dir, path) = image();
        let first = locked(&path, LockMode::Writer).expect("first writer");
        let copy = first.file().try_clone().expect("dup");
        drop(first);
        locked(&path, LockMode::Writer).expect("writer while a copy of the first is open");
        drop(copy);
    }

    #[test]
    fn a_force_share_reader_coexists_with_a_writer() {
        let (_dir, path) = image();
        let _w = locked(&path, LockMode::Writer).expect("writer");
        let _r = locked(&path, LockMode::SharedReader).expect("force-share reader");
    }

    #[test]
    fn shared_writers_coexist_and_refuse_an_exclusive_writer_and_a_reader() {
        let (_dir, path) = image();
        let a = locked(&path, LockMode::SharedWriter).expect("shared writer a");
        let b = locked(&path, LockMode::SharedWriter).expect("shared writer b");
        assert_eq!(
            refused(&path, LockMode::Writer),
            (Perm::Resize.unshared_byte(), false)
        );
        assert_eq!(
            refused(&path, LockMode::Reader),
            (Perm::Write.held_byte(), true)
        );
        let _r = locked(&path, LockMode::SharedReader).expect("force-share reader");
        drop(a);
        drop(b);
        let _w = locked(&path, LockMode::Writer).expect("writer once the shared ones closed");
        assert_eq!(
            refused(&path, LockMode::SharedWriter),
            (Perm::Write.unshared_byte(), false)
        );
    }

    #[test]
    fn the_lock_error_names_the_file_and_the_permission() {
        let (_dir, path) = image();
        let _w = locked(&path, LockMode::Writer).expect("writer");
        let e = locked(&path, LockMode::Writer).expect_err("second writer");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("\"write\" lock"), "{text}");
    }

    fn written_image(
        path: &Path,
        engine: crate::EngineKind,
    ) -> std::sync::Arc<dyn crate::BlockImage> {
        let opts = crate::OpenOptions {
            engine,
            ..crate::OpenOptions::default()
        };
        let image = crate::open_image(path, crate::Format::Raw, &opts).expect("open");
        let mut q = image.open_queue(4).expect("queue");
        q.submit(crate::IoOp::Flush, 1).expect("submit");
        q.commit().expect("commit");
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(None).expect("wait");
            q.reap(&mut done);
        }
        image
    }

    #[test]
    fn an_image_is_free_for_a_new_writer_as_soon_as_it_is_dropped() {
        let (_dir, path) = image();
        for engine in [crate::EngineKind::IoUring, crate::EngineKind::Sync] {
            let image = written_image(&path, engine);
            assert!(matches!(
                crate::open_image(&path, crate::Format::Raw, &crate::OpenOptions::default()),
                Err(Error::Locked { .. })
            ));
            drop(image);
            // An io_uring closes its registered files some time after the ring is dropped:
            // the locks must not live on with them.
            let again =
                crate::open_image(&path, crate::Format::Raw, &crate::OpenOptions::default());
            assert!(again.is_ok(), "{engine:?}: {:?}", again.err());
        }
    }

    #[test]
    fn a_backing_file_is_locked_against_writers_while_its_overlay_is_open() {
        let (dir, base) = image();
        let top = dir.path().join("top.qcow2");
        let opts = crate::qcow2::CreateOptions {
            backing_file: Some(base.clone()),
            backing_format: Some(crate::Format::Raw),
            ..Default::default()
        };
        crate::qcow2::create(&top, 4096, &opts).expect("create");
        let overlay = crate::open_image(&top, crate::Format::Qcow2, &crate::OpenOptions::default())
            .expect("overlay");
        assert!(matches!(
            locked(&base, LockMode::Writer),
            Err(Error::Locked { .. })
        ));
        locked(&base, LockMode::Reader).expect("a second reader of the backing file");
        drop(overlay);
        locked(&base, LockMode::Writer).expect("writer once the overlay is closed");
    }
}

//! Memory that outlives the process: a file of the backend's own domain, mapped shared.
//!
//! A request journal lives here (see `rustbk_ring::journal`): what a worker stored before it was
//! killed is what the next worker maps. The file is never shrunk while it exists, since an
//! access past the end of a shared file mapping raises SIGBUS: a fresh one replaces it under a
//! new inode, and processes that still map the old one keep their pages.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustbk_ring::SharedMemory;

use crate::Error;
use crate::sys::Region;

/// A file mapped shared, read-write; unmapped on drop (the file stays).
#[derive(Debug)]
pub struct FileMemory {
    region: Region,
}

fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()))
}

impl FileMemory {
    /// Replaces `path` with a new file of `len` zero bytes and maps it.
    pub fn create(path: &Path, len: usize) -> Result<FileMemory, Error> {
        remove(path)?;
        let file = open_options()
            .create_new(true)
            .open(path)
            .map_err(io_error("create", path))?;
        let size = u64::try_from(len).map_err(|_| Error::BadMapSize(len))?;
        file.set_len(size).map_err(io_error("size", path))?;
        Self::map(&file, len)
    }

    /// Maps the `len` bytes of `path` as an earlier process left them; if there is no such file,
    /// or it has another length, starts from zeroes as [`FileMemory::create`] does.
    pub fn open(path: &Path, len: usize) -> Result<FileMemory, Error> {
        let file = match open_options().open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Self::create(path, len),
            Err(e) => return Err(io_error("open", path)(e)),
        };
        let meta = file.metadata().map_err(io_error("stat", path))?;
        if !meta.is_file() || u64::try_from(len).ok() != Some(meta.len()) {
            let found = meta.len();
            tracing::warn!(path = %path.display(), found, len, "file of another length replaced");
            return Self::create(path, len);
        }
        Self::map(&file, len)
    }

    fn map(file: &File, len: usize) -> Result<FileMemory, Error> {
        Ok(FileMemory {
            region: Region::map_shared(file, 0, len, true)?,
        })
    }
}

/// Removes the file at `path`; nothing to do if there is none.
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error("remove", path)(e)),
        _ => Ok(()),
    }
}

#[allow(unsafe_code)]
// SAFETY: an owned, page-aligned, read-write MAP_SHARED mapping of `len` bytes, fixed until
// drop; the file is never shrunk while it exists (a fresh one gets a new inode): all stays backed.
unsafe impl SharedMemory for FileMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    fn len(&self) -> usize {
        self.region.len()
    }
}

#[cfg(test)]
mod tests {
    use rustbk_ring::SharedMemoryExt;

    use super::*;

    #[test]
    fn contents_survive_the_mapping_and_create_starts_from_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let first = FileMemory::create(&path, 8192).unwrap();
        first.store_u64(4096, 0x1122_3344_5566_7788).unwrap();
        first.write_bytes(10, b"kept").unwrap();
        drop(first);

        let again = FileMemory::open(&path, 8192).unwrap();
        assert_eq!(again.load_u64(4096), Ok(0x1122_3344_5566_7788));
        let mut b = [0u8; 4];
        again.read_bytes(10, &mut b).unwrap();
        assert_eq!(&b, b"kept");

        let fresh = FileMemory::create(&path, 8192).unwrap();
        assert_eq!(fresh.load_u64(4096), Ok(0));
        assert_eq!(
            again.load_u64(4096),
            Ok(0x1122_3344_5566_7788),
            "old inode kept"
        );
    }

    #[test]
    fn open_of_a_missing_or_resized_file_starts_from_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let m = FileMemory::open(&path, 4096).unwrap();
        assert_eq!(m.len(), 4096);
        m.store_u64(0, 7).unwrap();
        let bigger = FileMemory::open(&path, 8192).unwrap();
        assert_eq!((bigger.len(), bigger.load_u64(0)), (8192, Ok(0)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}

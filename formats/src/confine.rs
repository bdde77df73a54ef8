//! Which backing files an image may name.
//!
//! A backing file name is written by whoever wrote the image, and a tenant's image is hostile:
//! `/etc/shadow`, `../other-guest.img`, a symlink out of the image folder or `/dev/sda` would let
//! the guest read what is not its own. When serving, every backing file at every depth must be a
//! regular file that lies, once symlinks are resolved, inside one of the allowed directories, and
//! the image must name its format (backing files are never probed). The image tool, run by the
//! administrator, follows backing files wherever they are, as qemu-img does. Both refuse
//! protocol names (`nbd:...`, `json:{...}`): this crate opens files only.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::engine::{EngineFile, FileKind};
use crate::error::Error;
use crate::image::Format;

/// Where backing files may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingPolicy {
    /// Serving a guest: a backing file must be a regular file inside one of these directories
    /// (or below them) once symlinks are resolved, and its format must be named by the image
    /// that names it. An empty list allows the top image's own folder (symlinks resolved) and
    /// below.
    Confined(Vec<PathBuf>),
    /// The image tool run by the administrator: backing files are followed wherever they are,
    /// and probed when no format is named, as qemu-img does.
    Follow,
}

impl Default for BackingPolicy {
    fn default() -> Self {
        BackingPolicy::Confined(Vec::new())
    }
}

/// The protocol of a file name as QEMU parses it: the text before a `:` that comes before any
/// `/` (`nbd:host:10809`, `json:{...}`, `http://...`).
pub fn protocol_of(name: &Path) -> Option<String> {
    let bytes = name.as_os_str().as_bytes();
    let end = bytes.iter().position(|&b| b == b':' || b == b'/')?;
    (bytes[end] == b':').then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// The rules of a [`BackingPolicy`] for one backing chain, directories canonicalized.
#[derive(Debug)]
pub(crate) struct Confinement {
    /// `None`: anywhere.
    dirs: Option<Vec<PathBuf>>,
}

/// One backing file name, for error messages.
pub(crate) struct Named<'a> {
    /// The image that names the backing file.
    pub image: &'a Path,
    /// The name as stored in the image.
    pub name: &'a Path,
}

impl Named<'_> {
    fn refused(&self, why: String) -> Error {
        Error::BackingRefused {
            image: self.image.to_owned(),
            name: self.name.to_owned(),
            why,
        }
    }
}

impl Confinement {
    /// The rules of `policy` for the chain whose top image is `top`.
    pub fn new(policy: &BackingPolicy, top: &Path) -> Result<Confinement, Error> {
        let dirs = match policy {
            BackingPolicy::Follow => return Ok(Confinement { dirs: None }),
            BackingPolicy::Confined(dirs) if dirs.is_empty() => {
                vec![top.parent().unwrap_or(Path::new("/")).to_owned()]
            }
            BackingPolicy::Confined(dirs) => dirs.clone(),
        };
        let canonical = dirs
            .into_iter()
            .map(|dir| {
                std::fs::canonicalize(&dir).map_err(|source| Error::Open { path: dir, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Confinement {
            dirs: Some(canonical),
        })
    }

    /// The backing file's format: the one the image names, or (image tool only) `probe`'s.
    pub fn format(
        &self,
        named: &Named<'_>,
        format: Option<Format>,
        probe: impl FnOnce() -> Result<Format, Error>,
    ) -> Result<Format, Error> {
        match (format, &self.dirs) {
            (Some(format), _) => Ok(format),
            (None, None) => probe(),
            (None, Some(_)) => Err(named.refused(
                "the image names no backing format, and backing files are not probed when \
                 serving (set one with `qemu-img rebase -u -b NAME -F raw|qcow2 IMAGE`)"
                    .to_owned(),
            )),
        }
    }

    /// Where to open the backing file: relative names are relative to the naming image's
    /// folder; when confined, the canonical path, checked.
    pub fn locate(&self, named: &Named<'_>) -> Result<PathBuf, Error> {
        if let Some(protocol) = protocol_of(named.name) {
            return Err(named.refused(format!(
                "`{protocol}:` is a protocol name; only files are opened"
            )));
        }
        let path = resolve(named.image, named.name);
        if self.dirs.is_none() {
            return Ok(path);
        }
        let real = std::fs::canonicalize(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        self.check_inside(named, &real)?;
        let meta = std::fs::metadata(&real).map_err(|source| Error::Open {
            path: real.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(named.refused(format!(
                "{} is a {}, not a regular file",
                real.display(),
                kind_name(meta.file_type())
            )));
        }
        Ok(real)
    }

    /// Checks the file actually opened (a path swapped after [`Confinement::locate`] cannot
    /// lead elsewhere): a regular file whose location, as the kernel reports it for the open
    /// descriptor, is inside the allowed directories.
    pub fn check_opened(&self, named: &Named<'_>, file: &EngineFile) -> Result<(), Error> {
        if self.dirs.is_none() {
            return Ok(());
        }
        if file.kind() != FileKind::Regular {
            return Err(named.refused("the opened file is not a regular file".to_owned()));
        }
        self.check_inside(named, &file.real_path()?)
    }

    fn check_inside(&self, named: &Named<'_>, real: &Path) -> Result<(), Error> {
        let dirs = self.dirs.as_deref().unwrap_or_default();
        if dirs.iter().any(|dir| real.starts_with(dir)) {
            return Ok(());
        }
        let allowed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        Err(named.refused(format!(
            "it resolves to {}, outside the allowed backing directories ({})",
            real.display(),
            allowed.join(", ")
        )))
    }
}

/// Where a backing file named `name` in the image at `image` lives: `name` itself if
/// absolute, else relative to the image's folder.
pub(crate) fn resolve(image: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        return name.to_owned();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_owned(),
    }
}

fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_found_as_qemu_parses_them() {
        let p = |s: &str| protocol_of(Path::new(s));
        assert_eq!(p("nbd:host:10809").as_deref(), Some("nbd"));
        assert_eq!(p("json:{\"file\":{}}").as_deref(), Some("json"));
        assert_eq!(p("http://example/x").as_deref(), Some("http"));
        assert_eq!(p("file:base.raw").as_deref(), Some("file"));
        assert_eq!(p("base.raw"), None);
        assert_eq!(p("/images/a:b.raw"), None);
        assert_eq!(p("./a:b.raw"), None);
    }
}

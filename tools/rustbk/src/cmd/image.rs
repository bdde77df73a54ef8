//! `--image` of `demo` and `bench`: a file of the user's is written to only when they say so.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What `--image` names.
#[derive(Debug, PartialEq, Eq)]
pub enum UserImage {
    /// Nothing yet: a new raw image is made there.
    Missing(PathBuf),
    /// An empty regular file: made a raw image in place.
    Empty(PathBuf),
    /// A file with contents, or a block device, that `--overwrite` lets the run write over.
    Existing(PathBuf),
}

/// Checks `--image` before anything starts: an existing non-empty file or a block device is
/// refused unless `overwrite`.
pub fn user_image(path: &Path, overwrite: bool) -> anyhow::Result<UserImage> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(UserImage::Missing(path.into())),
        other => other.with_context(|| format!("cannot inspect {}", path.display()))?,
    };
    let kind = meta.file_type();
    if kind.is_file() && meta.len() == 0 {
        return Ok(UserImage::Empty(path.into()));
    }
    if !(kind.is_file() || kind.is_block_device()) {
        bail!(
            "{} is neither a regular file nor a block device",
            path.display()
        );
    }
    if overwrite {
        return Ok(UserImage::Existing(path.into()));
    }
    let what = if kind.is_file() {
        format!("a file of {} bytes", meta.len())
    } else {
        "a block device".to_owned()
    };
    bail!(
        "{} is {what}: the run would write over its contents; add --overwrite to allow that, \
         or name a new file",
        path.display()
    )
}

impl UserImage {
    /// Makes a missing or empty file a sparse raw image of `size` bytes. Returns the path and
    /// whether the image is all zeros.
    pub fn prepare_sparse(self, size: u64) -> anyhow::Result<(PathBuf, bool)> {
        match self {
            UserImage::Existing(p) => Ok((p, false)),
            UserImage::Missing(p) => {
                rustbk_formats::create_raw(&p, size)?;
                Ok((p, true))
            }
            UserImage::Empty(p) => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .with_context(|| format!("cannot size {}", p.display()))?;
                Ok((p, true))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{UserImage, user_image};

    #[test]
    fn only_a_missing_or_empty_file_is_taken_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (missing, empty, full) = (
            dir.path().join("missing"),
            dir.path().join("empty"),
            dir.path().join("full"),
        );
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&full, b"precious").unwrap();
        assert_eq!(
            user_image(&missing, false).unwrap(),
            UserImage::Missing(missing)
        );
        assert_eq!(user_image(&empty, false).unwrap(), UserImage::Empty(empty));
        let err = user_image(&full, false).unwrap_err().to_string();
        assert!(
            err.contains("--overwrite") && err.contains("8 bytes"),
            "{err}"
        );
        assert_eq!(
            user_image(&full, true).unwrap(),
            UserImage::Existing(full.clone())
        );
        assert!(user_image(dir.path(), true).is_err());
    }
}

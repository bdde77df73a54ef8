//! The folders the toolstack's `params` may name: with `--image-dir` (or `image_dirs` in the
//! configuration file), an image or a thin pool outside them is refused before it is opened.

use std::path::{Path, PathBuf};

use crate::Error;

/// Refuses `path` (an image file, block device or pool folder) unless, once symlinks are
/// resolved, it lies in one of `dirs` or below. Every path is allowed when `dirs` is empty.
/// `dirs` are canonical already (the command line resolves them).
pub(super) fn check_allowed(path: &Path, dirs: &[PathBuf], key: &str) -> Result<(), Error> {
    if dirs.is_empty() {
        return Ok(());
    }
    let real = std::fs::canonicalize(path).map_err(|e| Error::BadNode {
        path: key.into(),
        value: path.display().to_string(),
        why: format!("cannot resolve it: {e}"),
    })?;
    if dirs.iter().any(|d| real.starts_with(d)) {
        return Ok(());
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(Error::BadNode {
        path: key.into(),
        value: path.display().to_string(),
        why: format!(
            "{} is outside the allowed image folders ({})",
            real.display(),
            list.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::check_allowed;

    #[test]
    fn paths_outside_the_folders_are_refused_even_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("images");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(allowed.join("a.img"), b"x").unwrap();
        std::fs::write(other.join("b.img"), b"x").unwrap();
        std::os::unix::fs::symlink(other.join("b.img"), allowed.join("link.img")).unwrap();
        let dirs = [std::fs::canonicalize(&allowed).unwrap()];
        assert!(check_allowed(&allowed.join("a.img"), &dirs, "params").is_ok());
        assert!(check_allowed(&other.join("b.img"), &dirs, "params").is_err());
        let err = check_allowed(&allowed.join("link.img"), &dirs, "params").unwrap_err();
        assert!(err.to_string().contains("params"), "{err}");
        assert!(check_allowed(&allowed.join("../other/b.img"), &dirs, "params").is_err());
        assert!(check_allowed(&other.join("b.img"), &[], "params").is_ok());
    }
}

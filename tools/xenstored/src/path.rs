//! Path validation and canonicalisation, as the C daemon's `canonicalize()`.

use crate::perms::Caller;
use crate::wire::{ABS_PATH_MAX, Errno, REL_PATH_MAX};

/// The home directory of a domain: `/local/domain/<domid>`.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_chars(path: &[u8]) -> bool {
    path.iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@'))
}

/// Length of a `/local/domain/<digits>/` prefix (C: `%5u/%n`), or 0.
fn local_prefix_len(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    "/local/domain/".len() + digits + 1
}

/// A canonical path plus whether the client wrote it relative to its home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// Absolute path (or `@special`).
    pub path: String,
    /// Length of the home prefix to strip when echoing (0 if absolute).
    pub prefix_len: usize,
}

/// Validates `raw` and makes it absolute for `caller`. Special `@names` are
/// accepted only if `allow_special`. Errors are `EINVAL`, as in C.
pub fn canonicalize(caller: &Caller, raw: &[u8], allow_special: bool) -> Result<Canonical, Errno> {
    if !valid_chars(raw) || (raw.first() == Some(&b'@') && !allow_special) {
        return Err(Errno::Einval);
    }
    // valid_chars() guarantees ASCII.
    let text = std::str::from_utf8(raw).map_err(|_| Errno::Einval)?;
    let (path, prefix_len) = match raw.first() {
        Some(b'/' | b'@') => (text.to_owned(), 0),
        _ => {
            let home = domain_path(u32::from(caller.domid));
            let prefix_len = home.len() + 1;
            (format!("{home}/{text}"), prefix_len)
        }
    };
    let bad_shape = (path.ends_with('/') && path != "/") || path.contains("//");
    if bad_shape || path.len() > ABS_PATH_MAX {
        return Err(Errno::Einval);
    }
    if !caller.privileged && path.len() - local_prefix_len(&path) > REL_PATH_MAX {
        return Err(Errno::Einval);
    }
    Ok(Canonical { path, prefix_len })
}

/// Parent of an absolute path; `/` for top-level nodes and `@special` names.
pub fn parent(path: &str) -> &str {
    match path.get(1..).and_then(|rest| rest.rfind('/')) {
        Some(pos) => &path[..pos + 1],
        None => "/",
    }
}

/// Last component of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Joins a child name onto a parent path.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `child` equals `parent` or lies below it (`/` contains all).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    match child.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_to_home() {
        let c = canonicalize(&Caller::guest(5), b"device/vbd", false).unwrap();
        assert_eq!(c.path, "/local/domain/5/device/vbd");
        assert_eq!(&c.path[c.prefix_len..], "device/vbd");
        let d0 = canonicalize(&Caller::DOM0, b"x", false).unwrap();
        assert_eq!(d0.path, "/local/domain/0/x");
    }

    #[test]
    fn malformed_paths_are_einval() {
        let c = Caller::DOM0;
        for bad in [&b""[..], b"/a/", b"/a//b", b"/a b", b"/\xff", b"@x"] {
            assert_eq!(canonicalize(&c, bad, false), Err(Errno::Einval), "{bad:?}");
        }
        assert!(canonicalize(&c, b"@releaseDomain", true).is_ok());
        assert!(canonicalize(&c, b"/", false).is_ok());
        let long = vec![b'a'; ABS_PATH_MAX];
        let mut abs = b"/".to_vec();
        abs.extend_from_slice(&long);
        assert_eq!(canonicalize(&c, &abs, false), Err(Errno::Einval));
    }

    #[test]
    fn guests_have_a_shorter_relative_limit() {
        let body = "a".repeat(REL_PATH_MAX + 1);
        let path = format!("/local/domain/5/{body}");
        assert!(canonicalize(&Caller::DOM0, path.as_bytes(), false).is_ok());
        let err = canonicalize(&Caller::guest(5), path.as_bytes(), false);
        assert_eq!(err, Err(Errno::Einval));
    }

    #[test]
    fn parents_children_and_matching() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("@releaseDomain"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(child("/", "a"), "/a");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/x", "/"));
    }
}

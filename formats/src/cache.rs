//! Cache modes of an image file, with QEMU's names and meanings.
//!
//! | mode | O_DIRECT | O_DSYNC | a flush |
//! |---|---|---|---|
//! | `none` (default) | yes | no | fdatasync |
//! | `writeback` | no | no | fdatasync |
//! | `writethrough` | no | yes | fdatasync |
//! | `directsync` | yes | yes | fdatasync |
//! | `unsafe` | no | no | nothing |
//!
//! In `writethrough` and `directsync` every completed write is durable: data goes through
//! O_DSYNC descriptors, zeroing and discards (fallocate, BLKDISCARD) are followed by an
//! fdatasync, and qcow2 writes back its metadata before the writes that changed it complete.
//! A flush still runs (it costs little then).
//!
//! In `unsafe` nothing is ever synced: guest flushes complete at once, and so do the
//! fdatasyncs qcow2 uses to order its metadata writes (QEMU's `cache=unsafe` does the same).
//! The writes still reach the page cache in the crash-safe order, so a killed backend process
//! loses nothing, but a host crash or power failure can leave the image corrupt (a qcow2 entry
//! pointing at data that never reached the disk, for instance). For scratch disks only.

use std::fmt;
use std::str::FromStr;

/// How an image file's writes reach stable storage (QEMU's `cache=` modes; see the module
/// docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheMode {
    /// O_DIRECT; a flush is an fdatasync.
    #[default]
    None,
    /// The page cache; a flush is an fdatasync.
    Writeback,
    /// The page cache with O_DSYNC: every write is durable when it completes.
    Writethrough,
    /// O_DIRECT with O_DSYNC: every write is durable when it completes.
    DirectSync,
    /// The page cache, and nothing is ever synced: a flush completes at once.
    Unsafe,
}

/// A cache mode name that is not one of QEMU's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown cache mode {0:?} (expected none, writeback, writethrough, directsync or unsafe)")]
pub struct UnknownCacheMode(pub String);

impl CacheMode {
    /// Every mode, in the order of the docs.
    pub const ALL: [CacheMode; 5] = [
        CacheMode::None,
        CacheMode::Writeback,
        CacheMode::Writethrough,
        CacheMode::DirectSync,
        CacheMode::Unsafe,
    ];

    /// QEMU's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::DirectSync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }

    /// Whether the file gets an O_DIRECT descriptor (where the file system has one).
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }

    /// Whether the descriptors are opened with O_DSYNC (every write durable on completion).
    pub fn dsync(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::DirectSync)
    }

    /// Whether a flush (and any fdatasync) really syncs; false only for `unsafe`.
    pub fn syncs(self) -> bool {
        self != CacheMode::Unsafe
    }

    /// The same descriptors, but syncs are never skipped: `unsafe` becomes `writeback`. For
    /// files whose syncs others rely on (a thin pool's data device, which the pool syncs
    /// before every commit).
    pub fn always_syncing(self) -> CacheMode {
        match self {
            CacheMode::Unsafe => CacheMode::Writeback,
            mode => mode,
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CacheMode {
    type Err = UnknownCacheMode;

    /// One of QEMU's names (surrounding white space ignored, case sensitive as in QEMU).
    fn from_str(s: &str) -> Result<CacheMode, UnknownCacheMode> {
        let name = s.trim();
        CacheMode::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| UnknownCacheMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_from_its_qemu_name_and_displays_back() {
        for mode in CacheMode::ALL {
            assert_eq!(mode.to_string().parse::<CacheMode>(), Ok(mode));
        }
        assert_eq!("directsync".parse(), Ok(CacheMode::DirectSync));
        assert_eq!(" writeback\n".parse(), Ok(CacheMode::Writeback));
    }

    #[test]
    fn unknown_names_are_refused_with_the_list_of_modes() {
        for bad in ["", "direct", "None", "write-back", "unsafe,none"] {
            let err = bad.parse::<CacheMode>().expect_err(bad);
            assert_eq!(err, UnknownCacheMode(bad.to_owned()));
            assert!(err.to_string().contains("writethrough"), "{err}");
        }
    }

    #[test]
    fn the_flags_of_each_mode_are_qemus() {
        let flags = |m: CacheMode| (m.direct(), m.dsync(), m.syncs());
        assert_eq!(flags(CacheMode::None), (true, false, true));
        assert_eq!(flags(CacheMode::Writeback), (false, false, true));
        assert_eq!(flags(CacheMode::Writethrough), (false, true, true));
        assert_eq!(flags(CacheMode::DirectSync), (true, true, true));
        assert_eq!(flags(CacheMode::Unsafe), (false, false, false));
        assert_eq!(CacheMode::default(), CacheMode::None);
        assert_eq!(CacheMode::Unsafe.always_syncing(), CacheMode::Writeback);
        assert_eq!(
            CacheMode::DirectSync.always_syncing(),
            CacheMode::DirectSync
        );
    }
}

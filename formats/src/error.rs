//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or inspecting an image file failed.
    #[error("Cannot open {}", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{} is neither a regular file nor a block device", .0.display())]
    NotAnImage(PathBuf),
    /// Another process (or another open of the file) uses the image in a way this open
    /// cannot share: QEMU's image locking, bytes and messages included.
    #[error(
        "Failed to get {}\"{perm}\" lock on {}: another process {} \"{perm}\" (lock byte {byte} is held)",
        if *shared { "shared " } else { "" },
        path.display(),
        if *shared { "has the image open with" } else { "uses the image and does not share" }
    )]
    Locked {
        /// The image path.
        path: PathBuf,
        /// QEMU's name of the permission in conflict ("write", "resize", ...).
        perm: &'static str,
        /// True if the conflict is about refusing to share `perm` with a holder of it; false
        /// if about taking `perm` while someone refuses to share it.
        shared: bool,
        /// The byte offset of the conflicting lock.
        byte: i64,
    },
    /// The file carries the magic of a format that cannot be opened yet.
    #[error("Image format {0} is not supported yet")]
    UnsupportedFormat(&'static str),
    /// An argument (depth, sector size, image size, op length) is not acceptable.
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// The queue already holds as many ops as the depth it was opened with.
    #[error("Queue is full ({0} ops outstanding)")]
    QueueFull(u32),
    /// The op reaches past the end of the image.
    #[error("Range {offset}+{len} is beyond the image end {size}")]
    OutOfRange {
        /// First byte of the op.
        offset: u64,
        /// Length of the op in bytes.
        len: u64,
        /// Size of the image in bytes.
        size: u64,
    },
    /// Growing a served image to a smaller size: a served disk never shrinks (the guest may
    /// keep data past the new end).
    #[error("Shrinking a served disk is refused ({from} to {to} bytes): it can only grow")]
    Shrink {
        /// The size now, in bytes.
        from: u64,
        /// The size asked for, in bytes.
        to: u64,
    },
    /// A modifying op was sent to a read-only image.
    #[error("Image is read-only")]
    ReadOnly,
    /// io_uring was requested explicitly but the kernel refused it.
    #[error("io_uring is unavailable")]
    IoUringUnavailable(#[source] std::io::Error),
    /// The image's metadata is malformed or inconsistent (hostile or damaged image).
    #[error("Invalid image: {0}")]
    InvalidImage(String),
    /// The image uses a feature this implementation does not support.
    #[error("Unsupported image feature: {0}")]
    UnsupportedFeature(String),
    /// The image must be repaired before it can be opened read-write.
    #[error("Image needs repair: {0}")]
    NeedsRepair(String),
    /// The chain of backing files is broken, loops or is too deep.
    #[error("Backing chain: {0}")]
    BackingChain(String),
    /// A backing file named inside an image is not allowed (see [`BackingPolicy`]).
    ///
    /// [`BackingPolicy`]: crate::BackingPolicy
    #[error("Backing file {name:?} of {} refused: {why}", image.display())]
    BackingRefused {
        /// The image naming the backing file.
        image: PathBuf,
        /// The backing file name as stored in the image.
        name: PathBuf,
        /// Why it is refused.
        why: String,
    },
    /// Writing back cached metadata failed earlier; the image takes no more changes.
    #[error("Metadata write-back failed earlier ({0}); the image takes no more changes")]
    WriteBackFailed(String),
    /// A metadata write-back runs on a queue of the image (a flush); a synchronous one must
    /// wait until it finished.
    #[error("A metadata write-back of the image is still running on one of its queues")]
    WriteBackBusy,
    /// A system call or an I/O operation failed.
    #[error("I/O operation failed")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The errno that best describes this error (what a completion reports to the guest).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotAnImage(_) => libc::ENODEV,
            Error::Locked { .. } => libc::EBUSY,
            Error::UnsupportedFormat(_) => libc::EOPNOTSUPP,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::QueueFull(_) => libc::EBUSY,
            Error::OutOfRange { .. } => libc::EINVAL,
            Error::Shrink { .. } => libc::EINVAL,
            Error::ReadOnly => libc::EROFS,
            Error::InvalidImage(_) => libc::EIO,
            Error::UnsupportedFeature(_) => libc::EOPNOTSUPP,
            Error::NeedsRepair(_) => libc::EROFS,
            Error::BackingChain(_) => libc::ELOOP,
            Error::BackingRefused { .. } => libc::EACCES,
            Error::WriteBackFailed(_) => libc::EIO,
            Error::WriteBackBusy => libc::EBUSY,
            Error::IoUringUnavailable(e) | Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// An error carrying a positive errno value.
    pub fn from_errno(errno: i32) -> Error {
        Error::Io(std::io::Error::from_raw_os_error(errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_each_kind_to_its_errno() {
        assert_eq!(Error::ReadOnly.errno(), libc::EROFS);
        assert_eq!(Error::QueueFull(4).errno(), libc::EBUSY);
        assert_eq!(Error::from_errno(libc::ENOSPC).errno(), libc::ENOSPC);
        let range = Error::OutOfRange {
            offset: 1,
            len: 2,
            size: 2,
        };
        assert_eq!(range.errno(), libc::EINVAL);
        let io = Error::Io(std::io::Error::other("no errno"));
        assert_eq!(io.errno(), libc::EIO);
    }
}

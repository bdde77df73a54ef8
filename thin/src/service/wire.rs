//! The pool service's protocol: frames of a 4-byte little-endian length and a JSON body of at
//! most [`MAX_FRAME`] bytes, both ways. See `thin/DESIGN.md` ("The pool service").

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::meta::Mapping;
use crate::pool::{Origin, PoolUsage, VolumeUsage};
use crate::port::{NewMapping, VolumeInfo};

/// Largest frame body either side sends or accepts.
pub(crate) const MAX_FRAME: usize = 1 << 20;
/// Most virtual blocks one `lookup` or `unmap` frame covers (the client splits larger
/// ranges), so the reply fits in a frame.
pub(crate) const MAX_LOOKUP: u64 = 4096;
/// Most entries of one `map` or `release` frame (the client splits larger batches).
pub(crate) const MAX_BATCH: usize = 4096;

/// The version of this protocol. The first frame of a connection (`open` or `admin`) carries
/// it, and the service answers any other version with an error and closes the connection:
/// the service and its workers must be the same rustbk. Raise it with every change to a
/// frame. Frames from before it existed carry none, which reads as 0.
pub(crate) const PROTOCOL: u32 = 2;

/// What a worker asks. The first frame of a connection is `Open`, and only the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    Open {
        volume: u64,
        /// [`PROTOCOL`] of the worker.
        #[serde(default)]
        protocol: u32,
    },
    Admin {
        /// [`PROTOCOL`] of the admin client.
        #[serde(default)]
        protocol: u32,
    },
    Info,
    Lookup {
        start: u64,
        end: u64,
    },
    Provision {
        count: usize,
    },
    /// A provision answered at once, empty when no block is free (never waits for space).
    ProvisionAhead {
        count: usize,
    },
    Map {
        mappings: Vec<(u64, u64)>,
    },
    Unmap {
        start: u64,
        end: u64,
    },
    Release {
        blocks: Vec<u64>,
    },
    Commit,
    Paused,
}

/// What the service answers: one reply per request, in order, and `PauseRequest` or
/// `GiveBackRequest` at any time (unsolicited). `Resumed` answers `Paused` only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Reply {
    Info {
        info: WireInfo,
    },
    Mappings {
        mappings: Vec<(u64, u64, u32)>,
    },
    Blocks {
        blocks: Vec<u64>,
        /// For `provision`: those of `blocks` known to read zeros (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        zeroed: Vec<u64>,
    },
    Done,
    Resumed {
        info: WireInfo,
    },
    Failed {
        error: WireError,
    },
    PauseRequest,
    /// The pool is full: the worker gives back the blocks its volume holds in reserve (a
    /// `release`, empty if it holds none).
    GiveBackRequest,
    Usage {
        usage: PoolUsage,
    },
    Volumes {
        volumes: Vec<VolumeUsage>,
    },
    /// A snapshot was taken; its origin was held still this many microseconds.
    Snapshot {
        held_us: u64,
    },
    /// The pool took in its grown devices: it now has this many blocks of each.
    Grown {
        data_blocks: u64,
        metadata_blocks: u64,
    },
}

/// What an admin connection (first frame `admin`) asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum AdminRequest {
    CreateVolume {
        id: u64,
        size: u64,
        name: String,
        origin: Option<Origin>,
    },
    DeleteVolume {
        id: u64,
    },
    ResizeVolume {
        id: u64,
        size: u64,
    },
    Snapshot {
        origin: u64,
        id: u64,
        name: String,
    },
    Usage,
    Volumes,
    Commit,
    /// Take in all of the (grown) data and metadata devices, and commit.
    Grow,
}

/// [`VolumeInfo`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireInfo {
    id: u64,
    block_size: u64,
    size: u64,
    snapshotted_time: u32,
    time: u32,
    data_path: PathBuf,
    origin: Option<(PathBuf, String)>,
}

impl From<VolumeInfo> for WireInfo {
    fn from(v: VolumeInfo) -> WireInfo {
        WireInfo {
            id: v.id,
            block_size: v.block_size,
            size: v.size,
            snapshotted_time: v.snapshotted_time,
            time: v.time,
            data_path: v.data_path,
            origin: v.origin,
        }
    }
}

impl From<WireInfo> for VolumeInfo {
    fn from(w: WireInfo) -> VolumeInfo {
        VolumeInfo {
            id: w.id,
            block_size: w.block_size,
            size: w.size,
            snapshotted_time: w.snapshotted_time,
            time: w.time,
            data_path: w.data_path,
            origin: w.origin,
        }
    }
}

/// An [`Error`] on the wire: the kinds a data path acts on keep their kind, the others arrive
/// as [`Error::Service`] with their text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub(crate) enum WireError {
    MetadataFull(u64),
    DataFull(u64),
    NoSuchDevice(u64),
    InvalidArgument(String),
    Busy(String),
    Other(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> WireError {
        match e {
            Error::MetadataFull(n) => WireError::MetadataFull(*n),
            Error::DataFull(n) => WireError::DataFull(*n),
            Error::NoSuchDevice(id) => WireError::NoSuchDevice(*id),
            Error::InvalidArgument(why) => WireError::InvalidArgument(why.clone()),
            Error::Busy(why) => WireError::Busy(why.clone()),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::MetadataFull(n) => Error::MetadataFull(n),
            WireError::DataFull(n) => Error::DataFull(n),
            WireError::NoSuchDevice(id) => Error::NoSuchDevice(id),
            WireError::InvalidArgument(why) => Error::InvalidArgument(why),
            WireError::Busy(why) => Error::Busy(why),
            WireError::Other(why) => Error::Service(why),
        }
    }
}

/// Why a connection speaking `protocol` is refused, if it is.
pub(crate) fn refusal(protocol: u32) -> Option<Error> {
    (protocol != PROTOCOL).then(|| {
        Error::InvalidArgument(format!(
            "the client speaks pool service protocol {protocol} and this service {PROTOCOL}: \
             the pool service and the workers and tools using it must be the same rustbk \
             version (stop the service, or let it exit when idle, to upgrade it)"
        ))
    })
}

/// Mappings from the wire.
pub(crate) fn mappings_from(list: Vec<(u64, u64, u32)>) -> Vec<(u64, Mapping)> {
    list.into_iter()
        .map(|(vblock, block, time)| (vblock, Mapping { block, time }))
        .collect()
}

/// Mappings to the wire.
pub(crate) fn mappings_to(list: Vec<(u64, Mapping)>) -> Vec<(u64, u64, u32)> {
    list.into_iter()
        .map(|(vblock, m)| (vblock, m.block, m.time))
        .collect()
}

/// New mappings from the wire.
pub(crate) fn new_mappings(list: &[(u64, u64)]) -> Vec<NewMapping> {
    list.iter()
        .map(|&(vblock, block)| NewMapping { vblock, block })
        .collect()
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes (at most {MAX_FRAME})")]
    TooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame (length and body in one write).
pub(crate) fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= MAX_FRAME)
        .ok_or(FrameError::TooLong(body.len()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame; `None` when the peer closed the connection between frames.
pub(crate) fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_written() {
        let mut buf = Vec::new();
        let req = Request::Map {
            mappings: vec![(1, 2), (3, 4)],
        };
        write_frame(&mut buf, &req).expect("write");
        let got: Option<Request> = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!(got, Some(req));
        let none: Option<Request> = read_frame(&mut &[][..]).expect("eof");
        assert_eq!(none, None);
    }

    #[test]
    fn a_frame_longer_than_the_bound_is_refused_before_its_body_is_read() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let got = read_frame::<Request>(&mut buf.as_slice());
        assert!(matches!(got, Err(FrameError::TooLong(_))), "{got:?}");
    }

    #[test]
    fn a_cut_frame_and_unknown_fields_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Commit).expect("write");
        buf.truncate(buf.len() - 1);
        assert!(read_frame::<Request>(&mut buf.as_slice()).is_err());
        let body = br#"{"op":"open","volume":1,"extra":2}"#;
        let mut framed = u32::try_from(body.len())
            .expect("len")
            .to_le_bytes()
            .to_vec();
        framed.extend_from_slice(body);
        let got = read_frame::<Request>(&mut framed.as_slice());
        assert!(matches!(got, Err(FrameError::Malformed(_))), "{got:?}");
    }
}

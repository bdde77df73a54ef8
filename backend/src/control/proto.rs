//! The control protocol's messages: one JSON object per line.

use serde::{Deserialize, Serialize};

use crate::stats::StatsSnapshot;

/// What a client asks a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every device the worker serves, without counters.
    List,
    /// Devices with their counters: one (`devid`) or all.
    Stats {
        /// Only this device.
        #[serde(default)]
        devid: Option<u32>,
    },
    /// Stop taking requests: answer every request in flight, flush the image, release the
    /// rings. The guest's new requests wait in its ring until `unpause`.
    Pause {
        /// The device.
        devid: u32,
    },
    /// Take requests again after `pause`.
    Unpause {
        /// The device.
        devid: u32,
    },
    /// Stop serving the device: the frontend is asked to close, as when the toolstack takes
    /// the disk offline, and the worker lets it go.
    Close {
        /// The device.
        devid: u32,
    },
    /// Replace the disk's I/O limits (see [`Command::Qos`](super::Command::Qos)).
    Qos {
        /// The device.
        devid: u32,
        /// The limits, QEMU's names and syntax (`iops-total=500,bps-read=1048576`); `none`:
        /// unlimited.
        limits: String,
    },
    /// Grow the disk online (see [`Command::Resize`](super::Command::Resize)).
    Resize {
        /// The device.
        devid: u32,
        /// The new size in bytes.
        size: u64,
    },
}

impl Request {
    /// The device a command is for, if it is for one.
    pub fn devid(&self) -> Option<u32> {
        match self {
            Request::List => None,
            Request::Stats { devid } => *devid,
            Request::Pause { devid }
            | Request::Unpause { devid }
            | Request::Close { devid }
            | Request::Resize { devid, .. }
            | Request::Qos { devid, .. } => Some(*devid),
        }
    }
}

/// What a worker answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Reply {
    /// The devices asked for.
    Devices {
        /// One per device.
        devices: Vec<DeviceReport>,
    },
    /// The command was carried out.
    Done,
    /// The disk was resized.
    Resized(super::Resized),
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// One device of a worker, as `list` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The worker process.
    pub pid: u32,
    /// The guest.
    pub domid: u16,
    /// The virtual device number.
    pub devid: u32,
    /// What the device's state machine shows of it.
    #[serde(flatten)]
    pub status: super::DeviceStatus,
    /// The counters, for `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
}

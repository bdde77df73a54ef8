//! Commands for a served device from outside its state machine: the entry points `rustbk ctl`
//! calls.

use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// What an online resize did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resized {
    /// The disk's size before, in bytes.
    pub old: u64,
    /// The disk's size now, in bytes.
    pub new: u64,
    /// The new size was announced to a connected frontend (`sectors`, then `state` rewritten
    /// in one transaction); false while no frontend is connected, which reads the size when
    /// it connects.
    pub announced: bool,
}

/// A command for a device's state machine.
#[derive(Debug)]
pub(super) enum Command {
    /// Grow the disk to this many bytes.
    Resize(u64, oneshot::Sender<Result<Resized, Error>>),
}

/// A handle on one served device, for commands from outside its state machine. Cheap to clone;
/// every command waits for the device to carry it out.
#[derive(Clone, Debug)]
pub struct DeviceControl {
    tx: mpsc::UnboundedSender<Command>,
}

/// The device's side of its [`DeviceControl`] handles: give it to
/// [`run_controlled_device`](super::run_controlled_device).
#[derive(Debug)]
pub struct ControlInbox {
    rx: mpsc::UnboundedReceiver<Command>,
    tx: mpsc::UnboundedSender<Command>,
}

impl DeviceControl {
    /// A handle and the inbox its commands arrive in.
    pub fn new() -> (DeviceControl, ControlInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let control = DeviceControl { tx: tx.clone() };
        (control, ControlInbox { rx, tx })
    }

    /// Grows the served disk to `new_size` bytes, online, as Linux blkback does when its
    /// device grows: the image grows first (raw: the file is extended, unless it already
    /// holds `new_size` bytes; qcow2: a larger L1 table and the header's size), then the size
    /// every ring worker checks requests against, and then, if a frontend is connected, the new
    /// `sectors` (512-byte units) and the `state` node (Connected again) are written in one
    /// xenstore transaction so that blkfront re-reads `sectors` and sets its new capacity
    /// without a reboot. The guest's requests are served throughout.
    ///
    /// `new_size` must be a whole number of the disk's logical sectors. Shrinking a served
    /// disk is refused ([`rustbk_formats::Error::Shrink`] inside [`Error::Image`]); so is
    /// growing a null disk, a block device (grow the device: it is taken up within a second),
    /// a qcow2 image whose backing file or a thin volume whose origin is larger than it, and a
    /// thin volume whose pool this worker opened itself (no pool service). A thin volume
    /// grows in its pool first (the pool service's volume resize). A refused resize leaves the
    /// disk serving at its old size. [`Error::DeviceGone`] if the device is no longer served.
    pub async fn resize(&self, new_size: u64) -> Result<Resized, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Resize(new_size, reply))
            .map_err(|_| Error::DeviceGone)?;
        answer.await.map_err(|_| Error::DeviceGone)?
    }
}

impl ControlInbox {
    /// Another handle on the same device.
    pub fn handle(&self) -> DeviceControl {
        DeviceControl {
            tx: self.tx.clone(),
        }
    }

    /// The next command (never `None`: the inbox holds a sender itself).
    pub(super) async fn next(&mut self) -> Option<Command> {
        self.rx.recv().await
    }
}

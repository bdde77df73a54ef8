//! [`SocketPort`]: a volume's port to a pool service in another process.
//!
//! A reader thread receives every frame of the service: replies go to the caller, a pause or
//! give-back request sets its flag and calls the waker. A call that gets no reply within its
//! timeout, or whose connection broke, fails (EIO to the guest) and so does every later call:
//! the worker must drain and reconnect (see `thin/DESIGN.md`).

use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustbk_formats::engine::Access;
use rustbk_formats::{CacheMode, EngineFile};

use super::pipeline::{self, Pipeline};
use super::wire::{self, MAX_BATCH, MAX_LOOKUP, Reply, Request};
use crate::error::{Error, Result};
use crate::meta::Mapping;
use crate::port::{Handout, MapStart, NewMapping, PoolPort, VolumeInfo};
use crate::volume::{ThinVolume, VolumeOptions};

/// How long a call waits for its reply by default: longer than a provision queued on a full
/// pool may wait (60 s by default).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(90);

type Waker = Box<dyn Fn() + Send + Sync>;

/// What the reader thread tells the data path.
#[derive(Default)]
struct Flags {
    /// The service asks the volume to pause.
    pause: AtomicBool,
    /// The service asks for the volume's reserved blocks.
    give_back: AtomicBool,
    /// The connection ended (the service died or closed it).
    closed: AtomicBool,
    /// Maps the reader thread wakes the data path for when a reply arrives.
    awaited: AtomicUsize,
}

/// A port on one volume of a pool served by a pool service.
pub struct SocketPort {
    stream: UnixStream,
    replies: Receiver<Reply>,
    flags: Arc<Flags>,
    waker: Arc<Mutex<Option<Waker>>>,
    timeout: Duration,
    /// Set when a call failed in a way that leaves the replies out of step.
    broken: Option<String>,
    reader: Option<JoinHandle<()>>,
    /// The pool's data device, as the service named it when the volume was opened.
    data_path: PathBuf,
    /// Maps sent without waiting for their answers.
    pipeline: Pipeline,
}

impl SocketPort {
    /// Connects to the service at `socket` and opens `volume`.
    pub fn connect(socket: &Path, volume: u64) -> Result<SocketPort> {
        SocketPort::connect_with_timeout(socket, volume, DEFAULT_CALL_TIMEOUT)
    }

    /// [`SocketPort::connect`] with the time a call waits for its reply.
    pub fn connect_with_timeout(
        socket: &Path,
        volume: u64,
        timeout: Duration,
    ) -> Result<SocketPort> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| Error::Service(format!("cannot connect to {}: {e}", socket.display())))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| Error::Service(format!("socket: {e}")))?;
        let read_half = stream
            .try_clone()
            .map_err(|e| Error::Service(format!("socket: {e}")))?;
        let (tx, replies) = mpsc::channel();
        let flags = Arc::new(Flags::default());
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let (told, wake) = (flags.clone(), waker.clone());
        let reader = std::thread::Builder::new()
            .name("thin-port-reader".into())
            .spawn(move || read_loop(read_half, &tx, &told, &wake))
            .map_err(|e| Error::Service(format!("cannot start the reader thread: {e}")))?;
        let mut port = SocketPort {
            stream,
            replies,
            flags,
            waker,
            timeout,
            broken: None,
            reader: Some(reader),
            data_path: PathBuf::new(),
            pipeline: Pipeline::default(),
        };
        let open = Request::Open {
            volume,
            protocol: wire::PROTOCOL,
        };
        port.data_path = match port.call(&open).map_err(refused_open)? {
            Reply::Info { info } => VolumeInfo::from(info).data_path,
            other => return Err(port.unexpected(&other)),
        };
        Ok(port)
    }

    /// Opens the pool's data device for this volume's writes, sharing it with the service
    /// and the other workers (never with an exclusive writer such as QEMU), in `cache` mode
    /// (`unsafe` as `writeback`: the volume skips its flushes itself).
    pub fn open_data(&self, cache: CacheMode) -> Result<Arc<EngineFile>> {
        let cache = cache.always_syncing();
        let file = EngineFile::open(&self.data_path, Access::SharedWrite, cache)?;
        if file.read_only() {
            return Err(Error::InvalidArgument(format!(
                "data device {} is read-only",
                self.data_path.display()
            )));
        }
        Ok(Arc::new(file))
    }

    fn call(&mut self, request: &Request) -> Result<Reply> {
        if let Some(why) = &self.broken {
            return Err(Error::Service(why.clone()));
        }
        if let Err(e) = wire::write_frame(&mut self.stream, request) {
            return Err(self.fail(format!("cannot send to the pool service: {e}")));
        }
        while self.pipeline.awaited() {
            match self.replies.recv_timeout(self.timeout) {
                Ok(reply) => self.pipeline.reply(reply),
                Err(e) => return Err(self.lost(e)),
            }
        }
        self.flags.awaited.store(0, Ordering::SeqCst);
        match self.replies.recv_timeout(self.timeout) {
            Ok(Reply::Failed { error }) => Err(error.into()),
            Ok(reply) => Ok(reply),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Marks the port unusable (replies may be out of step) and closes the connection; the
    /// maps still waiting fail too.
    fn fail(&mut self, why: String) -> Error {
        tracing::error!(%why, "pool service connection lost");
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.pipeline.fail_all(&why);
        self.flags.awaited.store(0, Ordering::SeqCst);
        self.broken = Some(why.clone());
        Error::Service(why)
    }

    /// [`SocketPort::fail`] for a reply that did not come.
    fn lost(&mut self, e: RecvTimeoutError) -> Error {
        match e {
            RecvTimeoutError::Timeout => self.fail(format!(
                "no answer from the pool service within {:?}",
                self.timeout
            )),
            RecvTimeoutError::Disconnected => {
                self.fail("the pool service closed the connection".into())
            }
        }
    }

    /// Takes the replies that arrived for requests sent without waiting (maps, refills asked
    /// ahead); fails the port when the oldest waited longer than a call may.
    fn take_replies(&mut self) {
        while self.pipeline.awaited() {
            match self.replies.try_recv() {
                Ok(reply) => self.pipeline.reply(reply),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.fail("the pool service closed the connection".into());
                    return;
                }
            }
        }
        if self.oldest_overdue() {
            self.fail(format!(
                "no answer to a request sent ahead from the pool service within {:?}",
                self.timeout
            ));
        }
    }

    fn oldest_overdue(&self) -> bool {
        self.pipeline
            .oldest()
            .is_some_and(|sent| sent.elapsed() > self.timeout)
    }

    fn unexpected(&mut self, reply: &Reply) -> Error {
        self.fail(format!("unexpected reply {reply:?}"))
    }
}

#[cfg(test)]
impl SocketPort {
    /// A second handle on the connection, to cut it as a killed worker's would be cut.
    pub(super) fn connection(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }
}

/// Serves volume `volume` of the pool whose service listens on `socket`, from this process.
/// Once the service restarts, the volume reconnects by itself (it fails ops meanwhile).
pub fn open_volume(socket: &Path, volume: u64, opts: VolumeOptions) -> Result<ThinVolume> {
    let port = SocketPort::connect(socket, volume)?;
    let data = port.open_data(opts.cache)?;
    let vol = ThinVolume::new(Box::new(port), data, opts)?;
    let socket = socket.to_owned();
    vol.set_reconnect(Box::new(move || {
        let port = SocketPort::connect(&socket, volume)?;
        Ok(Box::new(port) as Box<dyn PoolPort>)
    }))?;
    Ok(vol)
}

/// The error of an `open` the service did not answer: a service of a rustbk from before the
/// protocol had a version closes the connection at a frame it does not know, without a word.
fn refused_open(e: Error) -> Error {
    match e {
        Error::Service(why) => Error::Service(format!(
            "{why} when asked to open the volume: if the pool service is an older rustbk, \
             stop it so that one of this version serves the pool (they must be the same version)"
        )),
        other => other,
    }
}

/// The reader thread: replies go to the caller (in order, one outstanding at a time), a pause
/// or give-back request raises its flag and wakes the data path, `Resumed` lowers the pause
/// flag before the caller sees it (so a pause request that follows it is never lost). When
/// the connection ends the port counts as failed, the pause flag is lowered and the data path
/// woken: a volume waiting to pause goes on, and its calls fail.
fn read_loop(
    mut stream: UnixStream,
    replies: &Sender<Reply>,
    flags: &Flags,
    waker: &Mutex<Option<Waker>>,
) {
    // Buffered: one `recv` takes a frame's length and body, or several frames at once.
    read_replies(
        &mut std::io::BufReader::new(&mut stream),
        replies,
        flags,
        waker,
    );
    flags.closed.store(true, Ordering::SeqCst);
    flags.pause.store(false, Ordering::SeqCst);
    wake(waker);
}

fn wake(waker: &Mutex<Option<Waker>>) {
    if let Ok(waker) = waker.lock() {
        if let Some(wake) = waker.as_ref() {
            wake();
        }
    }
}

fn read_replies(
    stream: &mut std::io::BufReader<&mut UnixStream>,
    replies: &Sender<Reply>,
    flags: &Flags,
    waker: &Mutex<Option<Waker>>,
) {
    loop {
        let reply = match wire::read_frame::<Reply>(stream) {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "bad frame from the pool service");
                let _ = stream.get_ref().shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        match reply {
            Reply::PauseRequest => {
                flags.pause.store(true, Ordering::SeqCst);
                wake(waker);
            }
            Reply::GiveBackRequest => {
                flags.give_back.store(true, Ordering::SeqCst);
                wake(waker);
            }
            reply => {
                if matches!(reply, Reply::Resumed { .. }) {
                    flags.pause.store(false, Ordering::SeqCst);
                }
                if replies.send(reply).is_err() {
                    return;
                }
                // A map sent without waiting: its queue sleeps until told.
                if flags.awaited.load(Ordering::SeqCst) > 0 {
                    wake(waker);
                }
            }
        }
    }
}

impl PoolPort for SocketPort {
    fn info(&mut self) -> Result<VolumeInfo> {
        match self.call(&Request::Info)? {
            Reply::Info { info } => Ok(info.into()),
            other => Err(self.unexpected(&other)),
        }
    }

    fn lookup(&mut self, vblocks: Range<u64>) -> Result<Vec<(u64, Mapping)>> {
        let mut found = Vec::new();
        let mut start = vblocks.start;
        while start < vblocks.end {
            let end = vblocks.end.min(start.saturating_add(MAX_LOOKUP));
            match self.call(&Request::Lookup { start, end })? {
                Reply::Mappings { mappings } => found.extend(wire::mappings_from(mappings)),
                other => return Err(self.unexpected(&other)),
            }
            start = end;
        }
        Ok(found)
    }

    fn provision_zeroed(&mut self, count: usize) -> Result<Handout> {
        match self.call(&Request::Provision { count })? {
            Reply::Blocks { blocks, zeroed } => {
                pipeline::handout(count, blocks, zeroed).map_err(|e| self.fail(e.to_string()))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn provision_ahead(&mut self, count: usize) -> Option<u64> {
        if self.broken.is_some() {
            return None;
        }
        if let Err(e) = wire::write_frame(&mut self.stream, &Request::ProvisionAhead { count }) {
            self.fail(format!("cannot send to the pool service: {e}"));
            return None;
        }
        Some(self.pipeline.sent_provision(count))
    }

    fn provision_answer(&mut self, ticket: u64, wait: bool) -> Option<Result<Handout>> {
        self.take_replies();
        while wait && self.pipeline.waits(ticket) {
            match self.replies.recv_timeout(self.timeout) {
                Ok(reply) => self.pipeline.reply(reply),
                Err(e) => {
                    self.lost(e);
                }
            }
        }
        self.pipeline.answer_provision(ticket)
    }

    fn map(&mut self, mappings: &[NewMapping]) -> Result<()> {
        for chunk in mappings.chunks(MAX_BATCH) {
            let mappings = chunk.iter().map(|m| (m.vblock, m.block)).collect();
            match self.call(&Request::Map { mappings })? {
                Reply::Done => {}
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(())
    }

    fn map_start(&mut self, mappings: &[NewMapping]) -> MapStart {
        if let Some(why) = &self.broken {
            return MapStart::Done(Err(Error::Service(why.clone())));
        }
        let chunks: Vec<&[NewMapping]> = mappings.chunks(MAX_BATCH).collect();
        // Counted before the frames go, so the reader wakes the data path for their replies.
        self.flags.awaited.fetch_add(1, Ordering::SeqCst);
        for chunk in &chunks {
            let mappings = chunk.iter().map(|m| (m.vblock, m.block)).collect();
            if let Err(e) = wire::write_frame(&mut self.stream, &Request::Map { mappings }) {
                let e = self.fail(format!("cannot send to the pool service: {e}"));
                return MapStart::Done(Err(e));
            }
        }
        MapStart::Sent(self.pipeline.sent_map(chunks.len()))
    }

    fn map_answer(&mut self, ticket: u64) -> Option<Result<()>> {
        self.take_replies();
        let answer = self.pipeline.answer_map(ticket);
        if !self.pipeline.maps_awaited() {
            self.flags.awaited.store(0, Ordering::SeqCst);
        }
        answer
    }

    fn unmap(&mut self, vblocks: Range<u64>) -> Result<Vec<u64>> {
        let mut freed = Vec::new();
        let mut start = vblocks.start;
        while start < vblocks.end {
            let end = vblocks.end.min(start.saturating_add(MAX_LOOKUP));
            match self.call(&Request::Unmap { start, end })? {
                Reply::Blocks { blocks, .. } => freed.extend(blocks),
                other => return Err(self.unexpected(&other)),
            }
            start = end;
        }
        Ok(freed)
    }

    fn release(&mut self, blocks: &[u64]) -> Result<()> {
        // An empty list goes out too: it answers a give-back request.
        let none = std::iter::once(blocks).filter(|b| b.is_empty());
        for chunk in blocks.chunks(MAX_BATCH).chain(none) {
            let blocks = chunk.to_vec();
            match self.call(&Request::Release { blocks })? {
                Reply::Done => {}
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        match self.call(&Request::Commit)? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    fn pause_requested(&self) -> bool {
        self.broken.is_none() && self.flags.pause.load(Ordering::SeqCst)
    }

    fn give_back_requested(&mut self) -> bool {
        // A load first: this is asked on every pump, and a request is rare.
        let flag = &self.flags.give_back;
        self.broken.is_none() && flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst)
    }

    fn paused(&mut self) -> Result<VolumeInfo> {
        match self.call(&Request::Paused)? {
            Reply::Resumed { info } => Ok(info.into()),
            other => Err(self.unexpected(&other)),
        }
    }

    fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut slot) = self.waker.lock() {
            *slot = Some(waker);
        }
    }

    fn failed(&self) -> bool {
        self.broken.is_some() || self.flags.closed.load(Ordering::SeqCst)
    }
}

impl Drop for SocketPort {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

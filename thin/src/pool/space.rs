//! Space: handing out data blocks (fail or queue when full), the low-water mark, the room
//! a metadata change needs, and the commit.

use std::time::{Duration, Instant};

use rustbk_formats::{Engine, EngineKind, ImageQueue, IoOp};

use super::{OnFull, PortEntry, Shared, State, ahead, prealloc};
use crate::error::{Error, Result};
use crate::meta::{Metadata, PendingCommit};
use crate::port::Handout;

/// How long a write on a full pool waits for the other ports' answers to a give-back
/// request, and how long an unanswered request keeps the port from being asked again.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(2);
/// Metadata blocks kept free for a commit whatever the transaction changed.
const COMMIT_RESERVE: u64 = 32;
/// Metadata blocks one mapping change may need (a shadowed path and its splits, twice:
/// block tree and top-level tree).
const CHANGE_RESERVE: u64 = 24;

/// Fails with [`Error::MetadataFull`], before anything changes, when the metadata device
/// would not have room for one more change and the commit after it. The commit rewrites
/// every bitmap the transaction touched, so the room grows with them.
pub(crate) fn check_metadata_room(md: &Metadata) -> Result<()> {
    let data_bitmaps = md.data_refs().dirty_bitmaps().len() as u64;
    let meta_bitmaps = md.metadata_refs().dirty_bitmaps().len() as u64;
    let need = COMMIT_RESERVE + CHANGE_RESERVE + 3 * data_bitmaps + 2 * meta_bitmaps;
    let free = md.metadata_refs().nr_free();
    if free < need {
        return Err(Error::MetadataFull(md.metadata_refs().nr_blocks()));
    }
    Ok(())
}

impl Shared {
    /// Runs (or joins) a group commit.
    pub(crate) fn commit(&self) -> Result<()> {
        self.gate.commit(|| self.commit_now())
    }

    /// One commit, in three steps. Under the pool's lock, the transaction goes into new
    /// metadata blocks (blocks handed out and not mapped are given back for it, so it
    /// records them free, and taken again) and the data device's sync starts. Without the
    /// lock, so that volumes go on provisioning and mapping into the next transaction, the
    /// new blocks are written and synced, and the superblock waits for them, the data sync
    /// (every block the new mappings point at was written before it was mapped) and the
    /// volume records written ahead. Under the lock again, the blocks the transaction freed
    /// are punched (with passdown) and may be handed out.
    fn commit_now(&self) -> Result<()> {
        let mut st = self.lock()?;
        if let Some(why) = &st.failed {
            return Err(Error::PoolFailed(why.clone()));
        }
        let ahead = std::mem::take(&mut st.ahead);
        if !st.md.is_dirty() {
            drop(st);
            // Nothing to commit, but a flush still counts on the data being durable.
            let synced = self.sync_data();
            return synced.and(ahead::wait_all(ahead));
        }
        std::thread::scope(|scope| {
            let data = scope.spawn(|| self.sync_data());
            let (pending, freed) = begin_commit(&mut st)?;
            drop(st);
            let written = pending.write(|| {
                let synced = data
                    .join()
                    .unwrap_or_else(|_| Err(Error::PoolFailed("the data sync panicked".into())));
                synced.and(ahead::wait_all(ahead))
            });
            let mut st = self.lock()?;
            self.end_commit(&mut st, written, &freed)
        })
    }

    /// The commit's last step, under the lock: on success the transaction's freed blocks
    /// are punched (passdown) and may be handed out; on failure the pool goes back to the
    /// last commit on disk and takes no more changes.
    fn end_commit(&self, st: &mut State, written: Result<()>, freed: &[u64]) -> Result<()> {
        let result = match written {
            Ok(()) => {
                st.md.end_commit();
                // The lock is still held: no freed block is handed out before it is punched.
                self.pass_down(st.block_size, freed)
            }
            Err(e) => {
                st.abort(&e);
                Err(e)
            }
        };
        self.space_changed(st);
        result
    }

    /// Makes every write on the data device durable before a commit.
    fn sync_data(&self) -> Result<()> {
        #[cfg(test)]
        if let Some(wait) = self.held_sync.lock().ok().and_then(|mut h| h.take()) {
            let _ = wait.recv();
        }
        #[cfg(test)]
        if self
            .skip_data_sync
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        Ok(self.data.datasync()?)
    }

    /// Hands out up to `count` data blocks (at least one; at most 16 or a 64th of the free
    /// ones, whichever is more), and which of them are known to read zeros. When none is
    /// free, the other ports are asked for the blocks they hold in reserve; the call waits
    /// for their answers, or for space if the pool queues writes when full.
    pub(crate) fn provision(&self, port: u64, count: usize) -> Result<Handout> {
        let now = Instant::now();
        let queue_until = now.checked_add(self.opts.full_timeout);
        let answers_until = now.checked_add(GIVE_BACK_WAIT);
        let mut st = self.lock()?;
        let mut asked = false;
        loop {
            let got = take_blocks(&mut st, count)?;
            if !got.is_empty() {
                return self.hand_out(&mut st, port, got);
            }
            // Once per call: a port that answered holds nothing it could give.
            if !std::mem::replace(&mut asked, true) {
                ask_give_back(&mut st, port);
            }
            let deadline = match self.opts.on_full {
                OnFull::Queue => queue_until,
                OnFull::Fail if awaits_give_back(&st) => answers_until,
                OnFull::Fail => Some(Instant::now()),
            };
            let left = deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Err(Error::DataFull(st.md.data_refs().nr_blocks()));
            }
            st = self
                .space
                .wait_timeout(st, left)
                .map_err(|_| Error::PoolFailed("a pool operation panicked".into()))?
                .0;
        }
    }

    /// Hands out up to `count` data blocks as [`Shared::provision`] does, but at once: with
    /// none free the handout is empty. A volume asks ahead while its reserve still lasts, so
    /// it must not wait (nor make others wait for its answer to a give-back request, which
    /// would queue behind this one); when the reserve runs out it asks with `provision`.
    pub(crate) fn provision_ahead(&self, port: u64, count: usize) -> Result<Handout> {
        let mut st = self.lock()?;
        let got = take_blocks(&mut st, count)?;
        match got.is_empty() {
            true => Ok(Handout::default()),
            false => self.hand_out(&mut st, port, got),
        }
    }

    /// Records blocks `got` (taken from the free ones) as handed out to `port`.
    fn hand_out(&self, st: &mut State, port: u64, got: Vec<u64>) -> Result<Handout> {
        let zeroed = match st.fresh.as_mut().map(|f| f.hand_out(&got)) {
            None => Vec::new(),
            Some(Ok(zeroed)) => zeroed,
            Some(Err(e)) => {
                give_back(st, &got)?;
                return Err(e);
            }
        };
        let entry = st
            .ports
            .get_mut(&port)
            .ok_or_else(|| Error::InvalidArgument("closed port".into()))?;
        entry.provisioned.extend(got.iter().copied());
        st.prealloc.reserve(&prealloc::Handout {
            data: &self.data,
            block_size: st.block_size,
            blocks: st.md.data_refs().nr_blocks(),
            got: &got,
            punched: self.opts.passdown,
        });
        self.low_water(st);
        Ok(Handout {
            blocks: got,
            zeroed,
        })
    }

    /// Wakes queued writes and re-arms the low-water mark after data blocks became free.
    pub(crate) fn space_changed(&self, st: &mut State) {
        if st.md.data_refs().nr_free() >= self.opts.low_water_blocks {
            st.low_water_fired = false;
        }
        self.space.notify_all();
    }

    fn low_water(&self, st: &mut State) {
        let free = st.md.data_refs().nr_free();
        if st.low_water_fired || free >= self.opts.low_water_blocks {
            return;
        }
        st.low_water_fired = true;
        tracing::warn!(
            pool = %self.meta_path.display(),
            free_blocks = free,
            low_water = self.opts.low_water_blocks,
            "thin pool data space below its low-water mark"
        );
        if let Some(hook) = &self.opts.low_water_hook {
            let child = std::process::Command::new(hook)
                .env("RUSTBK_POOL_METADATA", &self.meta_path)
                .env("RUSTBK_POOL_FREE_BLOCKS", free.to_string())
                .stdin(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(mut child) => {
                    std::thread::spawn(move || child.wait());
                }
                Err(e) => {
                    tracing::warn!(hook = %hook.display(), error = %e, "low-water hook failed to start")
                }
            }
        }
    }

    /// Punches holes in the data device over `blocks`, freed by the commit just made (the
    /// pool's lock is held, so none of them can be handed out again meanwhile).
    fn pass_down(&self, block_size: u64, blocks: &[u64]) -> Result<()> {
        if !self.opts.passdown || blocks.is_empty() {
            return Ok(());
        }
        let depth = u32::try_from(blocks.len().min(256)).unwrap_or(256);
        let mut engine = Engine::new(self.data.clone(), EngineKind::Sync, depth)?;
        for chunk in blocks.chunks(depth as usize) {
            for &b in chunk {
                let offset = b
                    .checked_mul(block_size)
                    .ok_or_else(|| Error::corrupt(format!("data block {b}")))?;
                engine.submit(
                    IoOp::Discard {
                        offset,
                        len: block_size,
                    },
                    b,
                )?;
            }
            engine.commit()?;
            let mut done = Vec::with_capacity(chunk.len());
            engine.reap(&mut done);
            for c in done {
                if let Err(e) = c.result {
                    tracing::debug!(block = c.tag, error = %e, "passdown discard failed");
                }
            }
        }
        Ok(())
    }
}

/// The commit's first step, under the lock: the pending commit, and the data blocks its
/// transaction freed that passdown punches once it is durable.
fn begin_commit(st: &mut State) -> Result<(PendingCommit, Vec<u64>)> {
    let held: Vec<u64> = st
        .ports
        .values()
        .flat_map(|p| p.provisioned.iter().copied())
        .collect();
    let pending = st.change(|md| {
        for &b in &held {
            md.release_data(b)?;
        }
        let pending = md.begin_commit()?;
        held.iter().try_for_each(|&b| md.claim_data(b))?;
        Ok(pending)
    })?;
    Ok((pending, std::mem::take(&mut st.pass_down)))
}

/// A port is handed at most this many blocks at once, or [`FREE_SHARE`] of the free ones if
/// that is more.
const MIN_HANDOUT: usize = 16;
/// The part of the free blocks one handout may take above [`MIN_HANDOUT`] (1/64): the
/// blocks a port holds and has not mapped are free to no one else, so as space runs low the
/// ports' reserves shrink and the last blocks go to whoever writes.
const FREE_SHARE: u64 = 64;

fn take_blocks(st: &mut State, count: usize) -> Result<Vec<u64>> {
    let share = usize::try_from(st.md.data_refs().nr_free() / FREE_SHARE).unwrap_or(usize::MAX);
    let count = count.min(share.max(MIN_HANDOUT));
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match st.change(Metadata::alloc_data) {
            Ok(b) => got.push(b),
            Err(Error::DataFull(_)) => break,
            Err(e) => {
                give_back(st, &got)?;
                return Err(e);
            }
        }
    }
    Ok(got)
}

/// Frees blocks just taken and not handed out.
fn give_back(st: &mut State, got: &[u64]) -> Result<()> {
    for &b in got {
        st.md.release_data(b)?;
    }
    Ok(())
}

/// Asks every other port that holds handed-out blocks, and was not asked within
/// [`GIVE_BACK_WAIT`], to give its reserve back. A port still silent since the last request
/// is asked again but no longer waited for.
fn ask_give_back(st: &mut State, asking: u64) {
    let now = Instant::now();
    let mut asked = 0;
    for (&id, entry) in st.ports.iter_mut() {
        if id == asking || asked_recently(entry, now) || entry.provisioned.is_empty() {
            continue;
        }
        if entry.asked_back.is_some() {
            entry.silent = true;
        }
        entry.asked_back = Some(now);
        entry.control.request_give_back();
        asked += 1;
    }
    if asked > 0 {
        tracing::info!(
            ports = asked,
            "thin pool out of free data blocks; asking volumes for their reserved blocks"
        );
    }
}

/// Whether a port asked for its reserve within [`GIVE_BACK_WAIT`] has not answered yet.
fn awaits_give_back(st: &State) -> bool {
    let now = Instant::now();
    st.ports.values().any(|p| awaits_answer(p, now))
}

/// Whether `port` was asked for its reserve within [`GIVE_BACK_WAIT`] before `now`, has not
/// answered, and answered the request before it.
fn awaits_answer(port: &PortEntry, now: Instant) -> bool {
    !port.silent && asked_recently(port, now)
}

/// Whether `port` was asked for its reserve within [`GIVE_BACK_WAIT`] before `now` and has
/// not answered.
fn asked_recently(port: &PortEntry, now: Instant) -> bool {
    port.asked_back
        .is_some_and(|t| now.saturating_duration_since(t) < GIVE_BACK_WAIT)
}

//! Fuzzes the data path end to end: a batch of raw request entries from the fuzzer is put on a
//! real ring page of an emulated guest (with fuzzer-filled pages the requests may point at as
//! data or indirect pages) and served by the real ring worker (`rustbk_backend::worker`) into a
//! raw image through its io_uring queue.
//!
//! Input: `[ctl] [entries...] [page bytes...]`. `ctl` bit 0 picks the x86_32 ABI, bit 1
//! persistent grants, bits 2..7 the number of entries (at most the ring's 32). Each entry's id
//! is replaced by its index, so that the check can tell the answers apart: every request must
//! be answered exactly once, and the worker must end only because it was asked to (a panic is
//! caught by the worker and reported as a failure, which fails the input here). An input that
//! names the ring's own grant may have a request read into the ring's page, which can leave the
//! worker disconnected and the responses unreadable; the worker must still end cleanly.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rustbk_backend::Stats;
use rustbk_backend::worker::{RingResources, Worker, WorkerConfig, WorkerExit};
use rustbk_formats::{BlockImage, EngineKind, Format, OpenOptions, create_raw, open_image};
use rustbk_grant::emu::{DomainConfig, EmuDomain, EmuPlatform};
use rustbk_grant::{Access, GrantRef, GuestHandle, Platform};
use rustbk_ring::{Abi, BackRing, DiskLimits, DomId, FrontRing, PAGE_SIZE};

const GUEST: DomId = DomId(1);
const BACKEND: DomId = DomId(0);
/// Guest frames: the ring at 0, then pages the requests may use.
const RING_FRAME: u32 = 0;
const DATA_PAGES: u32 = 32;
/// The first data pages take the input's trailing bytes (indirect segment lists, data).
const FILLED_PAGES: usize = 8;
const DISK_SECTORS: u64 = 2048;

/// The emulated guest and the image, made once per fuzzing process.
struct World {
    _dir: PathBuf,
    dom: EmuDomain,
    guest: Arc<dyn GuestHandle>,
    ring_ref: GrantRef,
    image: Arc<dyn BlockImage>,
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| Mutex::new(make_world()))
}

fn make_world() -> World {
    let dir = std::env::temp_dir().join(format!("rustbk-fuzz-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = DomainConfig {
        domid: GUEST,
        ram_pages: DATA_PAGES + 1,
        grant_entries: 64,
    };
    let dom = EmuDomain::create(&dir, cfg).expect("emulated guest");
    let guest = EmuPlatform::new(&dir, BACKEND)
        .attach(GUEST)
        .expect("attach guest");
    let ring_ref = dom.grant(BACKEND, RING_FRAME, false).expect("ring grant");
    for f in 1..=DATA_PAGES {
        // Odd frames read-only: a READ into them must be refused.
        dom.grant(BACKEND, f, f % 2 == 1).expect("data grant");
    }
    let path = dir.join("disk.img");
    create_raw(&path, DISK_SECTORS * 512).expect("image");
    let opts = OpenOptions {
        cache: rustbk_formats::CacheMode::Writeback,
        engine: EngineKind::Auto,
        ..OpenOptions::default()
    };
    let image = open_image(&path, Format::Raw, &opts).expect("open image");
    World {
        _dir: dir,
        dom,
        guest,
        ring_ref,
        image,
    }
}

fn limits() -> DiskLimits {
    DiskLimits {
        sectors: DISK_SECTORS,
        sector_size: 512,
        read_only: false,
        discard: true,
        max_indirect_segments: 4096,
    }
}

/// Puts the batch on a fresh ring, serves it with a real worker and checks the answers.
fn run(w: &World, ctl: u8, entries: &[u8], pages: &[u8]) {
    let abi = if ctl & 1 == 0 {
        Abi::X86_64
    } else {
        Abi::X86_32
    };
    let size = abi.request_size();
    let n = usize::from(ctl >> 2).min(32).min(entries.len() / size);
    fill_pages(w, pages);
    let ring_view = w.dom.ram().pages_view(RING_FRAME, 1).expect("ring view");
    w.dom.ram().write(0, &[0u8; PAGE_SIZE]).expect("clear ring");
    let mut front = FrontRing::init(ring_view, abi, 0).expect("front ring");
    let port = w.dom.alloc_unbound().expect("port");
    let mapped = w.guest.map_grants(&[w.ring_ref], Access::ReadWrite);
    let ring = BackRing::attach(
        mapped.expect("map ring").into_ring().expect("ring"),
        abi,
        0,
        0,
    );
    let res = RingResources {
        ring: ring.expect("back ring"),
        evtchn: w.guest.bind_event_channel(port.port()).expect("bind"),
        guest: Arc::clone(&w.guest),
        queue: w.image.open_queue(32).expect("queue"),
    };
    let cfg = WorkerConfig {
        domid: GUEST,
        devid: 51712,
        queue: 0,
        limits: limits(),
        sectors: rustbk_backend::worker::DiskSectors::new(DISK_SECTORS),
        persistent_grants: if ctl & 2 != 0 { 1056 } else { 0 },
        persistent_unused: None,
        poll_us: 0,
        poll_shared_cores: false,
        data_path: rustbk_backend::worker::DataPath::Map,
        fixed_buffers: false,
        qos: rustbk_backend::qos::DiskQos::new(Default::default()).expect("no limits"),
    };
    let lenient = names_ring_grant(w, abi, (entries, n));
    let exit = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&exit);
    let on_exit = move |e: &WorkerExit| *seen.lock().expect("exit") = Some(e.clone());
    let worker = Worker::spawn(cfg, res, Arc::new(Stats::default()), on_exit).expect("spawn");
    let id_at = abi.layout().req_id;
    for (i, chunk) in entries.chunks_exact(size).take(n).enumerate() {
        let mut entry = chunk.to_vec();
        entry[id_at..id_at + 8].copy_from_slice(&(i as u64).to_le_bytes());
        front.push_raw(&entry).expect("ring has room");
    }
    front.push_requests_and_check_notify();
    port.notify().expect("notify");
    let answered = collect(&mut front, n, &exit);
    let end = worker.stop();
    w.dom.close_port(port.port());
    if lenient {
        // A request may have read disk data into the ring's own page (its grant is a grant
        // like any other): the worker may find impossible indices and disconnect, and the
        // frontend may find its responses unreadable or wrong. Nothing else may go wrong.
        assert!(
            matches!(end, WorkerExit::Stopped | WorkerExit::RingOverflow),
            "worker ended badly (the input names the ring's grant): {end:?}"
        );
        return;
    }
    assert_eq!(end, WorkerExit::Stopped, "worker ended badly");
    assert_eq!(
        answered.expect("well-formed responses"),
        vec![1u8; n],
        "every request answered exactly once"
    );
}

/// Whether the ring's grant reference appears anywhere a request could take it from: in an
/// entry (its id aside) or in a data page (indirect segment lists; pages past the filled ones
/// keep what earlier inputs read into them). If not, no request can reach the ring's page.
fn names_ring_grant(w: &World, abi: Abi, (entries, n): (&[u8], usize)) -> bool {
    let gref = w.ring_ref.0.to_le_bytes();
    let mentions = |b: &[u8]| b.windows(4).any(|x| x == gref);
    let id_at = abi.layout().req_id;
    let in_entries = entries
        .chunks_exact(abi.request_size())
        .take(n)
        .any(|e| mentions(&e[..id_at]) || mentions(&e[id_at + 8..]));
    let mut data = vec![0u8; DATA_PAGES as usize * PAGE_SIZE];
    let first = u64::from(RING_FRAME + 1) * PAGE_SIZE as u64;
    w.dom.ram().read(first, &mut data).expect("read data pages");
    in_entries || mentions(&data)
}

/// Writes the trailing input bytes into the first data pages.
fn fill_pages(w: &World, bytes: &[u8]) {
    let len = bytes.len().min(FILLED_PAGES * PAGE_SIZE);
    w.dom
        .ram()
        .write(u64::from(RING_FRAME + 1) * PAGE_SIZE as u64, &bytes[..len])
        .expect("fill pages");
}

/// Counts the answers per request id until all `n` came, the worker ended, or 10 s passed;
/// the frontend's error if the responses stopped making sense.
fn collect(
    front: &mut FrontRing<rustbk_grant::emu::RamView>,
    n: usize,
    exit: &Mutex<Option<WorkerExit>>,
) -> Result<Vec<u8>, String> {
    let mut answered = vec![0u8; n];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < n && Instant::now() < deadline {
        match front.try_pop_response().map_err(|e| format!("{e:?}"))? {
            Some(rsp) => {
                let i = usize::try_from(rsp.id).ok().filter(|&i| i < n);
                let i = i.ok_or_else(|| format!("answer for an id never sent: {}", rsp.id))?;
                answered[i] += 1;
                got += 1;
            }
            None if exit.lock().expect("exit").is_some() => break,
            None => std::thread::sleep(Duration::from_micros(20)),
        }
    }
    Ok(answered)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let size = if ctl & 1 == 0 { 112 } else { 108 };
    let n = usize::from(ctl >> 2).min(32).min(rest.len() / size);
    let (entries, pages) = rest.split_at(n * size);
    let w = world().lock().expect("world");
    run(&w, ctl, entries, pages);
});

//! Shared set-up: an emulated host with one disk, and a guest with helpers for single requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustbk::cluster::EmuCluster;
use rustbk_blkfront::toolstack::{RUSTBK_SCRIPT, Toolstack, VbdSpec};
use rustbk_blkfront::{FrameAlloc, Frontend, FrontendConfig};
use rustbk_grant::emu::{DomainConfig, EmuDomain};
use rustbk_ring::{DomId, GrantRef, PAGE_SIZE, Request, Response, RwOp, Sector, Segment, Segments};
use rustbk_xenstored::XsClient;

pub const GUEST: DomId = DomId(1);
pub const XVDA: u32 = 51712;
pub const BACKEND: DomId = DomId(0);
const RAM_PAGES: u32 = 4096;

/// How to build the host.
pub struct Setup {
    pub size: u64,
    pub read_only: bool,
    pub discard: bool,
    /// The format prefix of `params` (`qcow2`), none for raw.
    pub format: Option<&'static str>,
    pub backend_args: Vec<String>,
    /// The `cache-mode` key of the backend directory, if any.
    pub cache_mode: Option<String>,
    /// The `data-path` key of the backend directory, if any.
    pub data_path: Option<String>,
    /// Environment of the backend processes.
    pub backend_env: Vec<(&'static str, String)>,
    /// `params` as written, instead of the image's path (e.g. `null:64M`).
    pub params: Option<String>,
    /// The `qos/` keys of the backend directory.
    pub qos: Vec<(String, String)>,
    /// Which toolstack writes the vbd (libxl's `backend/vbd` by default).
    pub toolstack: Toolstack,
    /// The backend's `script` key (xl's `script=rustbk` by default).
    pub script: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            size: 64 << 20,
            read_only: false,
            discard: true,
            format: None,
            backend_args: Vec::new(),
            cache_mode: None,
            data_path: None,
            backend_env: Vec::new(),
            params: None,
            qos: Vec::new(),
            toolstack: Toolstack::Libxl,
            script: Some(RUSTBK_SCRIPT.into()),
        }
    }
}

/// An emulated host serving one raw image to guest 1.
pub struct Host {
    pub cluster: EmuCluster,
    pub spec: VbdSpec,
    pub image: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Host {
    /// A host whose one disk is served by a `rustbk serve --devid` process.
    pub fn new(setup: Setup) -> Host {
        let (tmp, image, mut cluster) = Self::base(&setup);
        let spec = spec_for(&setup, GUEST, &image);
        cluster.add_disk(&spec, &args(&setup)).unwrap();
        Host {
            cluster,
            spec,
            image,
            _tmp: tmp,
        }
    }

    /// A host serving the image `make` creates in the host's folder.
    pub fn serving(setup: Setup, make: impl FnOnce(&std::path::Path) -> PathBuf) -> Host {
        Self::made(setup, make, false)
    }

    /// A host running `rustbk daemon`, with one claimed disk for guest 1: the image `make`
    /// creates in the host's folder.
    pub fn daemon_serving(setup: Setup, make: impl FnOnce(&std::path::Path) -> PathBuf) -> Host {
        Self::made(setup, make, true)
    }

    fn made(setup: Setup, make: impl FnOnce(&std::path::Path) -> PathBuf, daemon: bool) -> Host {
        let (tmp, _, mut cluster) = Self::base(&Setup {
            size: 4096,
            backend_env: setup.backend_env.clone(),
            ..Setup::default()
        });
        let image = make(tmp.path());
        let spec = spec_for(&setup, GUEST, &image);
        if daemon {
            cluster.start_daemon(&args(&setup)).unwrap();
            cluster.add_vbd(&spec).unwrap();
        } else {
            cluster.add_disk(&spec, &args(&setup)).unwrap();
        }
        Host {
            cluster,
            spec,
            image,
            _tmp: tmp,
        }
    }

    /// A host running `rustbk daemon`, with one claimed disk for guest 1.
    pub fn with_daemon(setup: Setup) -> Host {
        let (tmp, image, mut cluster) = Self::base(&setup);
        cluster.start_daemon(&args(&setup)).unwrap();
        let spec = spec_for(&setup, GUEST, &image);
        cluster.add_vbd(&spec).unwrap();
        Host {
            cluster,
            spec,
            image,
            _tmp: tmp,
        }
    }

    fn base(setup: &Setup) -> (tempfile::TempDir, PathBuf, EmuCluster) {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("disk.img");
        rustbk_formats::create_raw(&image, setup.size).unwrap();
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_rustbk"));
        let mut cluster = EmuCluster::start(&exe, tmp.path()).unwrap();
        for (k, v) in &setup.backend_env {
            cluster.set_backend_env(k, v);
        }
        (tmp, image, cluster)
    }

    /// A new raw image in the host's folder.
    pub fn new_image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.cluster.dir().join(name);
        rustbk_formats::create_raw(&p, size).unwrap();
        p
    }

    /// A connected guest.
    pub fn guest(&self) -> Guest {
        self.guest_with(|_| {})
    }

    /// A connected guest with a customised frontend configuration.
    pub fn guest_with(&self, f: impl FnOnce(&mut FrontendConfig)) -> Guest {
        self.guest_of(GUEST, XVDA, f)
    }

    /// A connected guest `domid` using its disk `devid`.
    pub fn guest_of(&self, domid: DomId, devid: u32, f: impl FnOnce(&mut FrontendConfig)) -> Guest {
        self.try_guest_of(domid, devid, f).unwrap_or_else(|e| {
            panic!(
                "connect failed: {e:?}; logs:\n{}{}",
                self.backend_log(),
                self.cluster.daemon_log()
            )
        })
    }

    /// A guest of domain 1 trying to connect with a customised frontend configuration.
    pub fn try_guest_with(
        &self,
        f: impl FnOnce(&mut FrontendConfig),
    ) -> Result<Guest, rustbk_blkfront::Error> {
        self.try_guest_of(GUEST, XVDA, f)
    }

    fn try_guest_of(
        &self,
        domid: DomId,
        devid: u32,
        f: impl FnOnce(&mut FrontendConfig),
    ) -> Result<Guest, rustbk_blkfront::Error> {
        let mut cfg = FrontendConfig::new(domid, devid);
        cfg.timeout = Duration::from_secs(15);
        f(&mut cfg);
        let dc = DomainConfig {
            domid,
            ram_pages: RAM_PAGES,
            grant_entries: RAM_PAGES + 64,
        };
        let dom = Arc::new(EmuDomain::create(self.cluster.dir(), dc).unwrap());
        let xs = XsClient::connect(&self.cluster.guest_socket(domid.0)).unwrap();
        let front = Frontend::connect(dom, xs, FrameAlloc::new(RAM_PAGES), cfg.clone())?;
        Ok(Guest {
            front,
            cfg,
            next_id: 1,
            stash: Vec::new(),
        })
    }

    pub fn backend_log(&self) -> String {
        std::fs::read_to_string(self.cluster.backend_log(&self.spec)).unwrap_or_default()
    }

    /// A value the backend wrote, read with Debian's `xenstore-read`.
    pub fn xenstore_read_cli(&self, key: &str) -> String {
        let out = std::process::Command::new("xenstore-read")
            .arg(format!("{}/{key}", self.spec.backend_path()))
            .env("XENSTORED_PATH", self.cluster.xenstore_socket())
            .output()
            .expect("xenstore-read (package xenstore-utils) must be installed");
        assert!(
            out.status.success(),
            "xenstore-read {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The names under `path` in the emulated xenstore, through `xenstore-list` as a
    /// toolstack would list them.
    pub fn xenstore_list_cli(&self, path: &str) -> Vec<String> {
        let out = std::process::Command::new("xenstore-list")
            .arg(path)
            .env("XENSTORED_PATH", self.cluster.xenstore_socket())
            .output()
            .expect("xenstore-list (package xenstore-utils) must be installed");
        assert!(
            out.status.success(),
            "xenstore-list {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

/// A connected in-process guest.
pub struct Guest {
    pub front: Frontend,
    pub cfg: FrontendConfig,
    next_id: u64,
    stash: Vec<Response>,
}

impl Guest {
    pub fn from_parts(front: Frontend, cfg: FrontendConfig) -> Guest {
        Guest {
            front,
            cfg,
            next_id: 1,
            stash: Vec::new(),
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn dom(&self) -> &Arc<EmuDomain> {
        self.front.domain()
    }

    /// Allocates `n` contiguous pages and grants them to the backend.
    pub fn pages(&mut self, n: u32, readonly: bool) -> (u32, Vec<GrantRef>) {
        let first = self.front.frames_mut().alloc(n).unwrap();
        let refs = (first..first + n)
            .map(|f| self.dom().grant(BACKEND, f, readonly).unwrap())
            .collect();
        (first, refs)
    }

    pub fn frame_addr(frame: u32) -> u64 {
        u64::from(frame) * PAGE_SIZE as u64
    }

    /// Pushes `req` (already queued entries included), notifies, returns nothing.
    pub fn send(&mut self, req: &Request) {
        self.front.push(req).unwrap();
        self.front.kick().unwrap();
    }

    /// Waits for the response with `id`, keeping others for later.
    pub fn wait(&mut self, id: u64) -> Response {
        if let Some(i) = self.stash.iter().position(|r| r.id == id) {
            return self.stash.remove(i);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut got = Vec::new();
            self.front
                .poll_responses(&mut got, Duration::from_millis(200))
                .unwrap();
            self.stash.extend(got);
            if let Some(i) = self.stash.iter().position(|r| r.id == id) {
                return self.stash.remove(i);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no response for id {id}"
            );
        }
    }

    /// Waits up to `timeout` for responses and adds them to `out` (the stash is not looked at).
    pub fn poll(&mut self, out: &mut Vec<Response>, timeout: Duration) {
        self.front.poll_responses(out, timeout).unwrap();
    }

    /// Collects `n` responses in arrival order.
    pub fn collect(&mut self, n: usize) -> Vec<Response> {
        let mut out = std::mem::take(&mut self.stash);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while out.len() < n {
            self.front
                .poll_responses(&mut out, Duration::from_millis(200))
                .unwrap();
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} responses",
                out.len()
            );
        }
        out
    }

    /// A direct READ/WRITE request over whole pages.
    pub fn rw(&mut self, op: RwOp, sector: u64, refs: &[GrantRef]) -> Request {
        let segs: Vec<Segment> = refs
            .iter()
            .map(|g| Segment {
                gref: *g,
                first_sect: 0,
                last_sect: 7,
            })
            .collect();
        Request::Rw {
            id: self.id(),
            op,
            handle: 0,
            sector: Sector(sector),
            segments: Segments::from_slice(&segs).unwrap(),
        }
    }

    /// Writes `data` (whole pages) at `sector`; returns the status.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> i16 {
        let n = u32::try_from(data.len().div_ceil(PAGE_SIZE)).unwrap();
        let (first, refs) = self.pages(n, true);
        self.dom()
            .ram()
            .write(Self::frame_addr(first), data)
            .unwrap();
        let req = self.rw(RwOp::Write, sector, &refs);
        self.send(&req);
        let st = self.wait(req.id()).status;
        self.release(first, &refs);
        st
    }

    /// Reads `pages` pages at `sector`; returns the status and the data.
    pub fn read(&mut self, sector: u64, pages: u32) -> (i16, Vec<u8>) {
        let (first, refs) = self.pages(pages, false);
        let req = self.rw(RwOp::Read, sector, &refs);
        self.send(&req);
        let st = self.wait(req.id()).status;
        let mut data = vec![0u8; pages as usize * PAGE_SIZE];
        self.dom()
            .ram()
            .read(Self::frame_addr(first), &mut data)
            .unwrap();
        self.release(first, &refs);
        (st, data)
    }

    /// Revokes the grants and frees the pages, unless the backend keeps them mapped as
    /// persistent grants (then they stay granted, as blkfront keeps them).
    pub fn release(&mut self, first: u32, refs: &[GrantRef]) {
        if refs.iter().any(|r| self.dom().grant_in_use(*r).unwrap()) {
            return;
        }
        for r in refs {
            self.dom().end_grant(*r).unwrap();
        }
        self.front
            .frames_mut()
            .free(first, u32::try_from(refs.len()).unwrap());
    }

    /// A single request with no data, e.g. a flush.
    pub fn no_data(&mut self, op: RwOp) -> Request {
        Request::Rw {
            id: self.id(),
            op,
            handle: 0,
            sector: Sector(0),
            segments: Segments::new(),
        }
    }
}

fn args(setup: &Setup) -> Vec<&str> {
    setup.backend_args.iter().map(String::as_str).collect()
}

/// The vbd of `domid` on `image` as the set-up describes it.
pub fn spec_for(setup: &Setup, domid: DomId, image: &std::path::Path) -> VbdSpec {
    let params = match setup.format {
        _ if setup.params.is_some() => setup.params.clone().unwrap_or_default(),
        Some(format) => format!("{format}:{}", image.display()),
        None => image.display().to_string(),
    };
    VbdSpec {
        read_only: setup.read_only,
        discard: setup.discard,
        cache_mode: setup.cache_mode.clone(),
        data_path: setup.data_path.clone(),
        qos: setup.qos.clone(),
        toolstack: setup.toolstack.clone(),
        script: setup.script.clone(),
        ..VbdSpec::rustbk(domid, XVDA, params)
    }
}

/// `len` bytes of a pattern depending on `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Serves, without a hotplug script (so a refused disk closes at once instead of waiting for
/// it), the disk `make` describes given a 1 MiB raw image (or `size` bytes) in a fresh folder;
/// returns the backend's `error` node once the device has closed.
pub fn refused_error(size: u64, make: impl FnOnce(&std::path::Path) -> VbdSpec) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rustbk"));
    let mut cluster = EmuCluster::start(&exe, tmp.path()).unwrap();
    let image = tmp.path().join("disk.img");
    rustbk_formats::create_raw(&image, size).unwrap();
    let spec = VbdSpec {
        script: None,
        ..make(&image)
    };
    let xs = cluster.toolstack().unwrap();
    cluster.add_disk(&spec, &[]).unwrap();
    let be = spec.backend_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while xs.try_read(&format!("{be}/state")).unwrap().as_deref() != Some("6") {
        assert!(
            std::time::Instant::now() < deadline,
            "the device never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    xs.try_read(&format!("{be}/error"))
        .unwrap()
        .unwrap_or_default()
}

/// Runs `rustbk ctl --lock-dir <host's folder> ARGS`.
pub fn ctl(host: &Host, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .arg("ctl")
        .arg("--lock-dir")
        .arg(host.cluster.dir())
        .args(args)
        .output()
        .expect("run rustbk ctl")
}

//! `rustbk ctl`: runtime control of the worker processes, in the manner of `tap-ctl`.
//!
//! Each worker listens on a control socket in the lock folder (see
//! [`rustbk_backend::control`]); this command finds the workers by their sockets.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rustbk_backend::control::{DeviceReport, Reply, Request, prometheus_text, socket_paths};

use crate::img::OutputArg;

/// How long a worker may take to answer (a pause waits for the requests in flight and a
/// flush).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// `rustbk ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Folder of the workers' control sockets: the lock folder of `rustbk daemon` and
    /// `rustbk serve` (`--lock-dir`, default /run/rustbk, or the emulator folder).
    #[arg(long, global = true, default_value = "/run/rustbk")]
    pub lock_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// One device of one guest.
#[derive(Debug, Args)]
pub struct DeviceArg {
    /// The guest's domain id.
    #[arg(long)]
    pub domid: u16,
    /// The virtual device number (51712 is xvda).
    #[arg(long)]
    pub devid: u32,
}

/// `rustbk ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every served device: worker pid, domid, devid, state, format, cache mode, image.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputArg::Human)]
        output: OutputArg,
    },
    /// Counters of every device, or of one guest or device: requests in and out, kicks,
    /// errors, sectors read and written, ring-full events, persistent grants, latency.
    Stats {
        /// Only this guest.
        #[arg(long)]
        domid: Option<u16>,
        /// Only this device (with --domid).
        #[arg(long, requires = "domid")]
        devid: Option<u32>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputArg::Human)]
        output: OutputArg,
    },
    /// Stop taking requests: answer those in flight, flush the image, release the rings. The
    /// guest keeps its requests in its ring until `unpause`.
    Pause(DeviceArg),
    /// Take requests again after `pause`.
    Unpause(DeviceArg),
    /// Stop serving a device: its frontend is asked to close, as when the toolstack takes the
    /// disk offline.
    Close(DeviceArg),
    /// Grow a served disk online to SIZE (bytes, or with a suffix: 40G): the image grows
    /// first (raw file, qcow2 L1 table and header, thin volume in its pool), then the guest is
    /// told, as Linux blkback does. Shrinking is refused. A raw file grown underneath
    /// (`truncate -s`) is taken up within a second without this command.
    Resize {
        /// The device.
        #[command(flatten)]
        device: DeviceArg,
        /// The new size.
        #[arg(value_parser = crate::cli::parse_size)]
        size: u64,
    },
    /// Replace a disk's I/O limits while it is served: QEMU's names
    /// (`iops-total=500,bps-read=1048576,iops-total-max=1000`), `none` for unlimited. Limits
    /// not named are lifted. They hold until the disk's `qos/` keys change or its frontend
    /// connects again.
    Qos {
        /// The device.
        #[command(flatten)]
        device: DeviceArg,
        /// The limits.
        limits: String,
    },
    /// Every device's counters in Prometheus' text format.
    Metrics,
    /// Stop worker processes (SIGTERM, then wait for them to exit): the guest's or every
    /// worker. Answered requests stay answered; the guests' rings stay connected, so a worker
    /// started again (by `rustbk daemon`) picks them up. Stopping the daemon leaves its workers
    /// serving; stop the daemon first, then its workers, to stop serving altogether.
    Stop {
        /// The worker of this guest.
        #[arg(long, required_unless_present = "all")]
        domid: Option<u16>,
        /// Every worker.
        #[arg(long, conflicts_with = "domid")]
        all: bool,
    },
}

/// Runs `rustbk ctl`.
pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.lock_dir;
    match args.command {
        CtlCommand::List { output } => print_list(&gather(dir, &Request::List)?, output),
        CtlCommand::Stats {
            domid,
            devid,
            output,
        } => {
            let mut devices = gather(dir, &Request::Stats { devid: None })?;
            devices.retain(|d| domid.is_none_or(|x| x == d.domid));
            devices.retain(|d| devid.is_none_or(|x| x == d.devid));
            if devices.is_empty() && domid.is_some() {
                bail!("no such device served under {}", dir.display());
            }
            print_stats(&devices, output)
        }
        CtlCommand::Pause(d) => command(dir, &d, |devid| Request::Pause { devid }),
        CtlCommand::Unpause(d) => command(dir, &d, |devid| Request::Unpause { devid }),
        CtlCommand::Close(d) => command(dir, &d, |devid| Request::Close { devid }),
        CtlCommand::Stop { domid, .. } => stop(dir, domid),
        CtlCommand::Qos { device, limits } => {
            rustbk_backend::qos::QosLimits::parse_list(&limits)
                .map_err(|e| anyhow::anyhow!("bad limits {limits:?}: {e}"))?;
            let devid = device.devid;
            command(dir, &device, |_| Request::Qos {
                devid,
                limits: limits.clone(),
            })
        }
        CtlCommand::Resize { device, size } => {
            let devid = device.devid;
            command(dir, &device, |_| Request::Resize { devid, size })
        }
        CtlCommand::Metrics => {
            let devices = gather(dir, &Request::Stats { devid: None })?;
            print!("{}", prometheus_text(&devices));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `stop` waits for a worker to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// SIGTERMs the workers (of guest `domid`, or all) and waits until each has exited.
fn stop(dir: &Path, domid: Option<u16>) -> anyhow::Result<ExitCode> {
    let mut pids: Vec<(u32, u16)> = gather(dir, &Request::List)?
        .iter()
        .filter(|d| domid.is_none_or(|x| x == d.domid))
        .map(|d| (d.pid, d.domid))
        .collect();
    pids.sort_unstable();
    pids.dedup_by_key(|(pid, _)| *pid);
    if pids.is_empty() && domid.is_some() {
        bail!("no worker under {} serves that guest", dir.display());
    }
    for (pid, dom) in &pids {
        let target = nix::unistd::Pid::from_raw(i32::try_from(*pid)?);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("cannot signal worker {pid} (domid {dom})"))?;
    }
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    for (pid, dom) in pids {
        let target = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        while nix::sys::signal::kill(target, None).is_ok() {
            if std::time::Instant::now() > deadline {
                bail!("worker {pid} (domid {dom}) did not exit within {STOP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("stopped worker {pid} (domid {dom})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks every live worker in `dir`; sockets whose worker is gone are skipped.
fn gather(dir: &Path, request: &Request) -> anyhow::Result<Vec<DeviceReport>> {
    let sockets = match socket_paths(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for path in sockets {
        let Ok(mut conn) = Connection::open(&path) else {
            continue;
        };
        match conn.ask(request)? {
            Reply::Devices { devices } => out.extend(devices),
            Reply::Error { message } => bail!("{}: {message}", path.display()),
            Reply::Done | Reply::Resized(_) => bail!("{}: unexpected reply", path.display()),
        }
    }
    out.sort_by_key(|d| (d.domid, d.devid));
    Ok(out)
}

/// Sends a device command to the worker serving it.
fn command(dir: &Path, dev: &DeviceArg, make: impl Fn(u32) -> Request) -> anyhow::Result<ExitCode> {
    let path = find_worker(dir, dev)?;
    match Connection::open(&path)?.ask(&make(dev.devid))? {
        Reply::Done => Ok(ExitCode::SUCCESS),
        Reply::Resized(r) => {
            let told = if r.announced {
                "the guest was told"
            } else {
                "no frontend connected"
            };
            println!("resized from {} to {} bytes ({told})", r.old, r.new);
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { message } => bail!("domid {} devid {}: {message}", dev.domid, dev.devid),
        Reply::Devices { .. } => bail!("{}: unexpected reply", path.display()),
    }
}

/// The socket of the worker serving `dev`.
fn find_worker(dir: &Path, dev: &DeviceArg) -> anyhow::Result<PathBuf> {
    for path in socket_paths(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let Ok(mut conn) = Connection::open(&path) else {
            continue;
        };
        if let Reply::Devices { devices } = conn.ask(&Request::List)? {
            if devices
                .iter()
                .any(|d| d.domid == dev.domid && d.devid == dev.devid)
            {
                return Ok(path);
            }
        }
    }
    bail!(
        "no worker under {} serves domid {} devid {}",
        dir.display(),
        dev.domid,
        dev.devid
    )
}

/// A client connection to one worker.
struct Connection {
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Connection {
    fn open(path: &Path) -> anyhow::Result<Connection> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot reach the worker at {}", path.display()))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            path: path.to_owned(),
        })
    }

    fn ask(&mut self, request: &Request) -> anyhow::Result<Reply> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        let at = || format!("worker at {}", self.path.display());
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .with_context(at)?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).with_context(at)?;
        if answer.is_empty() {
            bail!("{} hung up", at());
        }
        serde_json::from_str(&answer).with_context(|| format!("bad reply from the {}", at()))
    }
}

fn print_list(devices: &[DeviceReport], output: OutputArg) -> anyhow::Result<ExitCode> {
    if output == OutputArg::Json {
        println!("{}", serde_json::to_string_pretty(devices)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in devices {
        println!(
            "pid={} domid={} devid={} state={}{} format={} cache={} data-path={} {} size={} queues={} params={}",
            d.pid,
            d.domid,
            d.devid,
            d.status.state,
            if d.status.paused { " paused" } else { "" },
            d.status.format,
            d.status.cache,
            d.status.data_path,
            if d.status.read_only { "ro" } else { "rw" },
            d.status.size,
            d.status.queues,
            d.status.params
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(devices: &[DeviceReport], output: OutputArg) -> anyhow::Result<ExitCode> {
    if output == OutputArg::Json {
        let values = devices
            .iter()
            .map(stats_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in devices {
        let Some(s) = &d.stats else { continue };
        println!("domid={} devid={} pid={}", d.domid, d.devid, d.pid);
        println!("  requests in/out  {} / {}", s.requests, s.responses);
        println!("  kicks in/out     {} / {}", s.kicks_in, s.kicks_out);
        println!("  polled waits     {}", s.polled);
        println!(
            "  reads/writes     {} / {} ({} / {} sectors)",
            s.reads,
            s.writes,
            s.sectors_read(),
            s.sectors_written()
        );
        println!("  flushes/discards {} / {}", s.flushes, s.discards);
        println!(
            "  errors           {} ({} bad requests)",
            s.errors, s.bad_requests
        );
        println!("  ring full        {}", s.ring_full);
        println!(
            "  persistent       {} kept, {} hits, {} misses",
            s.persistent_cached, s.persistent_hits, s.persistent_misses
        );
        println!(
            "  data path        {} grant-copied, {} on fixed buffers",
            s.grant_copy_requests, s.fixed_buffer_requests
        );
        if s.responses > 0 {
            let mean = s.latency_us_sum as f64 / s.responses as f64;
            println!("  latency          mean {mean:.1} us");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A device's report as JSON, its counters with blkback's sector counts added.
fn stats_json(d: &DeviceReport) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(d)?;
    if let (Some(s), Some(obj)) = (&d.stats, v.get_mut("stats").and_then(|s| s.as_object_mut())) {
        obj.insert("sectors_read".into(), s.sectors_read().into());
        obj.insert("sectors_written".into(), s.sectors_written().into());
    }
    Ok(v)
}

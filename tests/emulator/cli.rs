//! `rustbk demo`, `bench` and `serve` as a user runs them: arguments refused before any
//! process starts, a user's image left alone, a dead backend reported at once with its log,
//! signals stopping every child, and an unreachable xenstore named with its own errno.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn rustbk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rustbk"))
}

fn run(args: &[&str]) -> Output {
    rustbk().args(args).output().expect("run rustbk")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A demo running in the background, its stdout read line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = rustbk()
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start demo");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            stdout: Vec::new(),
        }
    }

    /// The work folder and the backend's pid, from the `processes:` line.
    fn started(&mut self) -> (PathBuf, u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("demo never started: {:?}", self.stdout));
            self.stdout.push(line.clone());
            let Some(rest) = line.strip_prefix("  processes: ") else {
                continue;
            };
            let backend = rest
                .split("backend ")
                .nth(1)
                .and_then(|r| r.split(',').next());
            let dir = rest
                .split("(logs in ")
                .nth(1)
                .map(|r| r.trim_end_matches(')'));
            let (Some(backend), Some(dir)) = (backend, dir) else {
                panic!("cannot parse {line:?}");
            };
            return (PathBuf::from(dir), backend.parse().expect("backend pid"));
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, sig).expect("signal demo");
    }

    /// Waits (at most `limit`) for the demo to exit; its exit code and stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("demo still runs after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let mut stderr = self.child.stderr.take().expect("stderr");
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        (status.code(), err)
    }
}

/// Pids of the live processes whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if text(&cmdline).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// Waits until `ok` holds, at most `limit`.
fn eventually(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn stopped_by(sig: Signal, code: i32) {
    let mut demo = Demo::start(&["--duration=60", "--size=64m"]);
    let (dir, _) = demo.started();
    assert!(
        eventually(Duration::from_secs(30), || processes_using(&dir).len() >= 3),
        "xenstored, serve and the guest should run: {:?}",
        processes_using(&dir)
    );
    let children = processes_using(&dir);
    demo.signal(sig);
    let (exit, err) = demo.finish(Duration::from_secs(20));
    assert_eq!(exit, Some(code), "{err}");
    let alive: Vec<u32> = children
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        alive.is_empty(),
        "children left (or not reaped): {alive:?}; {err}"
    );
    assert!(processes_using(&dir).is_empty(), "{err}");
    assert!(!dir.exists(), "{} should be gone; {err}", dir.display());
}

#[test]
fn sigterm_to_demo_stops_and_reaps_every_child_and_removes_the_work_folder() {
    stopped_by(Signal::SIGTERM, 143);
}

#[test]
fn sigint_to_demo_stops_and_reaps_every_child_and_removes_the_work_folder() {
    stopped_by(Signal::SIGINT, 130);
}

#[test]
fn demo_reports_a_dead_backend_at_once_with_its_log_and_keeps_the_folder() {
    let mut demo = Demo::start(&["--duration=60", "--size=64m"]);
    let (dir, backend) = demo.started();
    // The guest is connected once its progress shows; then the backend dies.
    std::thread::sleep(Duration::from_millis(1500));
    kill(
        Pid::from_raw(i32::try_from(backend).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let (exit, err) = demo.finish(Duration::from_secs(30));
    let took = killed.elapsed();
    assert_eq!(exit, Some(1), "{err}");
    assert!(took < Duration::from_secs(5), "noticed after {took:?}");
    assert!(
        err.contains(&format!(
            "serve (backend of guest 1, disk 51712) (pid {backend})"
        )) && err.contains("SIGKILL")
            && err.contains("backend state"),
        "{err}"
    );
    assert!(
        err.contains(&format!("logs kept in {}", dir.display())),
        "{err}"
    );
    assert!(dir.join("backend-1-51712.log").exists());
    assert!(
        eventually(Duration::from_secs(5), || processes_using(&dir).is_empty()),
        "children left: {:?}",
        processes_using(&dir)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_and_bench_leave_a_non_empty_image_alone_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("mine.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    let img = image.to_str().unwrap();
    for cmd in ["demo", "bench"] {
        let out = run(&[cmd, "--image", img, "--size=1m"]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("--overwrite") && err.contains(img), "{err}");
        assert!(std::fs::read(&image).unwrap().iter().all(|&b| b == 7));
    }
    let help = text(&run(&["demo", "--help"]).stdout);
    assert!(help.contains("--overwrite"), "{help}");
    let out = run(&[
        "demo",
        "--image",
        img,
        "--overwrite",
        "--duration=0.5",
        "--qd=4",
        "--sector-size=4096",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1048576 bytes in 4096-byte sectors"),
        "the size is printed in bytes: {err}"
    );
    assert!(std::fs::read(&image).unwrap().iter().any(|&b| b != 7));
}

#[test]
fn demo_makes_a_missing_image_of_the_size_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("new.img");
    let out = run(&[
        "demo",
        "--image",
        image.to_str().unwrap(),
        "--size=2m",
        "--duration=0.5",
        "--qd=4",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 2 << 20);
}

#[test]
fn demo_serves_a_qcow2_image_named_with_its_format() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.qcow2");
    let path = image.to_str().unwrap();
    let made = run(&["img", "create", "-q", "-f", "qcow2", path, "8m"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(
        made.stdout.is_empty(),
        "-q prints nothing: {}",
        text(&made.stdout)
    );
    let args = [
        "demo",
        "--image",
        path,
        "--format=qcow2",
        "--duration=0.5",
        "--qd=4",
    ];
    let refused = run(&args);
    assert!(
        !refused.status.success(),
        "an existing image needs --overwrite"
    );
    let out = run(&[&args[..], &["--overwrite"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Served as qcow2, not as raw bytes over its header: the image is still a sound qcow2
    // holding the workload's clusters.
    let check = run(&["img", "check", path]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert!(std::fs::metadata(&image).unwrap().len() > 1 << 20);
}

#[test]
fn bad_arguments_are_refused_before_any_process_starts() {
    let cases: [&[&str]; 14] = [
        &["demo", "--qd=0"],
        &["demo", "--qd=513"],
        &["demo", "--duration=-1"],
        &["demo", "--duration=nan"],
        &["demo", "--bs=1000"],
        &["demo", "--ring-order=5"],
        &["demo", "--rwmix-read=101"],
        &["demo", "--size=0"],
        &["bench", "--runtime=0.5"],
        &["bench", "--rounds=0"],
        &["bench", "--queues=0"],
        &["demo", "--max-queues=0"],
        &["demo", "--qos=iops-total=1,iops-read=1"],
        &["bench", "--qos=iops_total=5"],
    ];
    for args in cases {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let flag = args[1].split('=').next().unwrap();
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("emu guest"), "{args:?}: {err}");
    }
    // Checks between arguments, made before the work folder exists.
    let out = run(&["demo", "--sector-size=4096", "--bs=512"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--sector-size") && !err.contains("logs kept"),
        "{err}"
    );
}

#[test]
fn unreachable_xenstore_is_named_with_the_errno_of_its_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let missing = tmp.path().join("missing.sock");
    for (socket, errno) in [
        (&stale, "Connection refused"),
        (&missing, "No such file or directory"),
    ] {
        let out = rustbk()
            .args(["serve", "--domid=1", "--devid=51712", "--emu-dir"])
            .arg(tmp.path())
            .env("XENSTORED_PATH", socket)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let want = format!("{} (set by XENSTORED_PATH)", socket.display());
        assert!(err.contains(&want) && err.contains(errno), "{err}");
    }
}

#[test]
fn backend_refuses_an_empty_image_and_one_ending_in_a_partial_sector() {
    use crate::harness::{Host, Setup};
    for (name, size, why) in [
        ("empty.img", 0, "is empty (0 bytes)"),
        (
            "odd.img",
            1000,
            "is 1000 bytes, not a whole number of 512-byte sectors",
        ),
    ] {
        let host = Host::serving(Setup::default(), |dir| {
            let p = dir.join(name);
            std::fs::write(&p, vec![0u8; size]).unwrap();
            p
        });
        assert!(
            eventually(Duration::from_secs(20), || host.backend_log().contains(why)),
            "{name}: {}",
            host.backend_log()
        );
        assert!(!host.backend_log().contains("image opened"), "{name}");
    }
}

#[test]
fn demo_with_two_queues_connects_two_rings_and_verifies_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rustbk()
        .args(["demo", "--queues=2", "--max-queues=2", "--size=16m"])
        .args(["--duration=1", "--qd=8", "--keep"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("0 mismatches, 0 errors"), "{stdout}");
    let work = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("rustbk-demo-"))
        .expect("kept work folder")
        .path();
    let log = std::fs::read_to_string(work.join("backend-1-51712.log")).unwrap();
    assert!(log.contains("rings connected queues=2"), "{log}");
}

/// `bench --format` serves a converted copy of the image in that format and measures both
/// sides: the header names the copy the backend served, and every row has IOPS on both sides.
#[test]
fn bench_serves_a_copy_in_each_image_format_against_fio_on_the_raw_image() {
    for format in ["qcow2", "vhd", "vmdk"] {
        let args = [
            "bench",
            "--format",
            format,
            "--size=16m",
            "--runtime=1",
            "--rounds=1",
            "--depths=4",
            "--json",
        ];
        let out = run(&args);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{format}: {err}");
        let served = format!("rustbk serving {format}:");
        assert!(
            err.contains(&served) && err.contains(&format!("bench.{format}")),
            "{err}"
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let rows = rows.as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{rows:?}");
        for row in rows {
            let iops = |side: &str| row[side].as_f64().unwrap_or(0.0);
            assert!(iops("rustbk_iops") > 0.0 && iops("fio_iops") > 0.0, "{row}");
        }
    }
}

/// `bench` takes turns: rustbk runs first in odd rounds and fio in even ones, so whatever the
/// first run leaves warm below the file does not always favour fio.
#[test]
fn bench_takes_turns_at_running_first() {
    let args = [
        "bench",
        "--size=16m",
        "--runtime=1",
        "--rounds=2",
        "--depths=4",
        "--json",
    ];
    let out = run(&args);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    for rw in ["randread", "randwrite"] {
        for (round, first) in [(1, "rustbk"), (2, "fio")] {
            let line = format!("{rw} qd4 round {round} ({first} first): rustbk ");
            assert!(err.contains(&line), "no `{line}` in:\n{err}");
        }
    }
}

/// `thin bench --only provisioned` measures the thin volume against the raw file, and fio on
/// the two files themselves, every round.
#[test]
fn thin_bench_measures_the_two_files_beside_the_provisioned_cases() {
    let args = [
        "thin",
        "bench",
        "--only=provisioned",
        "--size=16m",
        "--runtime=1",
        "--rounds=2",
        "--output=json",
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let io = results["io"].as_array().expect("io cases");
    assert_eq!(io.len(), 2, "{results}");
    let positive = |v: &serde_json::Value| {
        v.as_array()
            .is_some_and(|runs| runs.len() == 2 && runs.iter().all(|r| r.as_f64() > Some(0.0)))
    };
    for case in io {
        assert!(
            positive(&case["thin_iops"]) && positive(&case["peer_iops"]),
            "{case}"
        );
    }
    let files = &results["files"];
    for side in [
        "data_read_iops",
        "raw_read_iops",
        "data_write_iops",
        "raw_write_iops",
    ] {
        assert!(positive(&files[side]), "{side}: {files}");
    }
}

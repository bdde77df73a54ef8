//! `rustbk ctl` against a live emulated guest: the counters match the guest's own counts
//! exactly, pause really stops I/O (the guest's requests wait in the ring), unpause serves
//! them with no error, close asks the frontend to close, and metrics render the same counts.

use std::process::Output;
use std::time::{Duration, Instant};

use rustbk_ring::{RwOp, status};
use serde_json::Value;

use crate::harness::{GUEST, Guest, Host, Setup, XVDA, ctl, pattern};

fn ctl_ok(host: &Host, args: &[&str]) -> String {
    let out = ctl(host, args);
    assert!(
        out.status.success(),
        "rustbk ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The one device `ctl stats --output=json` reports for guest 1's xvda.
fn stats(host: &Host) -> Value {
    let (dom, dev) = (GUEST.0.to_string(), XVDA.to_string());
    let args = ["stats", "--domid", &dom, "--devid", &dev, "--output=json"];
    let all: Value = serde_json::from_str(&ctl_ok(host, &args)).unwrap();
    let devices = all.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{all}");
    devices[0].clone()
}

fn counter(v: &Value, name: &str) -> u64 {
    v["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

fn device_args() -> [String; 4] {
    [
        "--domid".into(),
        GUEST.0.to_string(),
        "--devid".into(),
        XVDA.to_string(),
    ]
}

fn device_command(host: &Host, command: &str) -> Output {
    let mut args = vec![command.to_owned()];
    args.extend(device_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctl(host, &args)
}

/// Writes `writes` 8 KiB blocks, reads them back, and flushes `flushes` times.
fn workload(g: &mut Guest, writes: u64, flushes: u64) {
    for i in 0..writes {
        assert_eq!(g.write(i * 16, &pattern(8192, i as u8)), status::OKAY);
    }
    for i in 0..writes {
        assert_eq!(g.read(i * 16, 2), (status::OKAY, pattern(8192, i as u8)));
    }
    for _ in 0..flushes {
        let req = g.no_data(RwOp::Flush);
        g.send(&req);
        assert_eq!(g.wait(req.id()).status, status::OKAY);
    }
}

#[test]
fn stats_count_exactly_what_the_guest_did_and_list_names_the_worker() {
    let host = Host::with_daemon(Setup::default());
    let mut g = host.guest();
    workload(&mut g, 12, 3);
    let s = stats(&host);
    let requests = 12 + 12 + 3;
    assert_eq!(counter(&s, "writes"), 12);
    assert_eq!(counter(&s, "reads"), 12);
    assert_eq!(counter(&s, "flushes"), 3);
    assert_eq!(counter(&s, "requests"), requests);
    assert_eq!(counter(&s, "responses"), requests);
    assert_eq!(counter(&s, "sectors_written"), 12 * 16);
    assert_eq!(counter(&s, "sectors_read"), 12 * 16);
    assert_eq!(counter(&s, "errors"), 0);
    let kicks = counter(&s, "kicks_in");
    assert!((1..=requests).contains(&kicks), "kicks in {kicks}");
    let histogram: u64 = s["stats"]["latency_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert_eq!(
        histogram, requests,
        "every response is in the latency histogram"
    );

    let list: Value = serde_json::from_str(&ctl_ok(&host, &["list", "--output=json"])).unwrap();
    let d = &list.as_array().unwrap()[0];
    assert_eq!(d["pid"].as_u64(), host.cluster.worker_pid(1).map(u64::from));
    assert_eq!(d["state"], "Connected");
    assert_eq!(d["format"], "raw");
    assert_eq!(d["cache"], "none");
    assert_eq!(d["data_path"], "map");
    assert_eq!(d["params"], host.image.display().to_string());
    assert_eq!(d["size"].as_u64(), Some(64 << 20));
    assert_eq!(d["paused"], false);

    let metrics = ctl_ok(&host, &["metrics"]);
    let line = format!("rustbk_writes_total{{domid=\"1\",devid=\"{XVDA}\"}} 12");
    assert!(metrics.contains(&line), "{metrics}");
    let count =
        format!("rustbk_request_latency_seconds_count{{domid=\"1\",devid=\"{XVDA}\"}} {requests}");
    assert!(metrics.contains(&count), "{metrics}");
}

#[test]
fn pause_holds_the_guests_requests_in_the_ring_and_unpause_serves_them() {
    let host = Host::with_daemon(Setup::default());
    let mut g = host.guest();
    workload(&mut g, 4, 1);
    let out = device_command(&host, "pause");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stats(&host);
    assert_eq!(
        (s["paused"].as_bool(), s["queues"].as_u64()),
        (Some(true), Some(0))
    );

    // A write sent while paused is not served: no response, nothing in the image.
    let data = pattern(8192, 0x5a);
    let (first, refs) = g.pages(2, true);
    g.dom()
        .ram()
        .write(Guest::frame_addr(first), &data)
        .unwrap();
    let req = g.rw(RwOp::Write, 1024, &refs);
    g.send(&req);
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    let mut got = Vec::new();
    while Instant::now() < quiet_until {
        g.poll(&mut got, Duration::from_millis(100));
        assert!(got.is_empty(), "a paused device answered {got:?}");
    }
    let image = std::fs::read(&host.image).unwrap();
    assert_ne!(
        &image[1024 * 512..1024 * 512 + 8192],
        &data[..],
        "written while paused"
    );
    assert_eq!(counter(&stats(&host), "requests"), 4 + 4 + 1);

    let out = device_command(&host, "unpause");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(g.wait(req.id()).status, status::OKAY);
    g.release(first, &refs);
    assert_eq!(g.read(1024, 2), (status::OKAY, data));
    let s = stats(&host);
    assert_eq!(s["paused"], false);
    assert_eq!(counter(&s, "requests"), 4 + 4 + 1 + 2);
    assert_eq!(counter(&s, "errors"), 0);
}

#[test]
fn commands_for_unknown_devices_fail_clearly_and_close_asks_the_frontend_to_close() {
    let host = Host::with_daemon(Setup::default());
    let mut g = host.guest();
    workload(&mut g, 1, 0);
    let out = ctl(&host, &["pause", "--domid", "7", "--devid", "51712"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no worker") && err.contains("domid 7"),
        "{err}"
    );

    let out = device_command(&host, "close");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.xenstore_read_cli("state") != "5" {
        assert!(Instant::now() < deadline, "backend never went to Closing");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_started_for_one_disk_answers_on_its_own_socket() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    workload(&mut g, 2, 1);
    let socket = host.cluster.dir().join(format!("disk-1-{XVDA}.sock"));
    assert!(socket.exists(), "no socket at {}", socket.display());
    let s = stats(&host);
    assert_eq!(counter(&s, "requests"), 5);
    assert_eq!(
        s["pid"].as_u64(),
        host.cluster.backend_pid(&host.spec).map(u64::from)
    );
}

#[test]
fn stop_ends_a_worker_and_the_guest_goes_on_with_the_one_the_daemon_starts() {
    let host = Host::with_daemon(Setup::default());
    let mut g = host.guest();
    workload(&mut g, 2, 1);
    let old = host.cluster.worker_pid(1).expect("worker");
    let out = ctl_ok(&host, &["stop", "--domid", "1"]);
    assert!(out.contains(&format!("stopped worker {old}")), "{out}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(old).unwrap());
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "worker {old} still runs"
    );
    // The guest's ring stayed connected: the restarted worker serves it.
    assert_eq!(g.write(2048, &pattern(8192, 9)), status::OKAY);
    assert_eq!(g.read(2048, 2), (status::OKAY, pattern(8192, 9)));
    let new = host.cluster.worker_pid(1).expect("a new worker");
    assert_ne!(new, old);

    let out = ctl(&host, &["stop"]);
    assert!(!out.status.success(), "stop needs --domid or --all");
}

/// `polled` after `writes` queue-depth-1 writes and reads (read back and compared) by a
/// backend run with `poll_us`, on a raw image or one of `format`.
fn polled_waits(poll_us: &str, writes: u64, format: Option<&'static str>) -> u64 {
    let setup = Setup {
        format,
        // Polled even on a loaded test machine (by default polling stops while the runnable
        // threads outnumber the CPUs).
        backend_args: vec![
            "--poll-us".into(),
            poll_us.into(),
            "--poll-shared-cores".into(),
        ],
        ..Setup::default()
    };
    let host = match format {
        None => Host::with_daemon(setup),
        Some(_) => Host::daemon_serving(setup, |dir| {
            let path = dir.join("disk.qcow2");
            let opts = rustbk_formats::qcow2::CreateOptions::default();
            rustbk_formats::qcow2::create(&path, 64 << 20, &opts).expect("qcow2");
            path
        }),
    };
    let mut g = host.guest();
    workload(&mut g, writes, 1);
    counter(&stats(&host), "polled")
}

#[test]
fn an_adaptive_poll_catches_queue_depth_one_requests_and_none_is_done_when_off() {
    assert_eq!(polled_waits("0", 50, None), 0, "polling off");
    // A guest at queue depth 1 sends its next request right after a response: with a 1 ms
    // window the worker catches most of them spinning (a descheduled spin resets the window,
    // so a loaded machine catches fewer, but not none in 400 requests).
    let polled = polled_waits("1000", 200, None);
    assert!(polled > 0, "no wait ended by polling in 400 requests");
}

#[test]
fn a_polling_worker_serves_a_qcow2_disk_and_reads_back_what_it_wrote() {
    let polled = polled_waits("1000", 200, Some("qcow2"));
    assert!(polled > 0, "no wait ended by polling in 400 requests");
}

#[test]
fn a_guest_that_polls_its_responses_is_not_notified_of_them() {
    use rustbk_blkfront::workload::{self, Pattern, Workload};
    let host = Host::with_daemon(Setup::default());
    let w = Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 4096,
        queue_depth: 1,
        duration: Duration::from_secs(10),
        max_ops: Some(400),
        verify: true,
        fresh: true,
        region: Some(4 << 20),
        flush_every: None,
        seed: 7,
        rate: None,
    };
    let mut g = host.guest();
    let r = workload::run(&mut g.front, &w, &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors, r.reads + r.writes), (0, 0, 400));
    // A guest that finds no response sleeps after asking for a notification, and the backend
    // wakes it every time. (A response that lands before the guest asks needs none: how
    // often that happens depends on the disk beneath.)
    let slept = counter(&stats(&host), "kicks_out");
    let sleeps = g.front.sleeps();
    assert!(
        sleeps.slept >= 100 && sleeps.woken == sleeps.slept && slept >= sleeps.woken,
        "a sleeping guest is woken by a notification each time: {sleeps:?}, {slept} kicks"
    );

    // The same workload again, polling long enough for every response.
    g.front.set_spin(Duration::from_secs(1));
    let w = Workload { fresh: false, ..w };
    let r = workload::run(&mut g.front, &w, &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors, r.reads + r.writes), (0, 0, 400));
    let polled = counter(&stats(&host), "kicks_out") - slept;
    assert!(polled <= 20, "a polling guest was notified {polled} times");
}

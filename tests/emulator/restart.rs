//! A backend SIGKILLed again and again under a verifying workload: each restarted backend
//! reattaches to the same ring and serves, from the request journal, what the killed one had
//! consumed. Every request must be answered exactly once, with its own operation and the right
//! data.

use std::time::{Duration, Instant};

use rustbk_blkfront::rng::Rng;
use rustbk_blkfront::workload::{Pattern, Workload, run};

use crate::harness::{Host, Setup};

/// How long the guest keeps requests in flight while its backend is killed.
const RUN: Duration = Duration::from_secs(12);

#[test]
fn a_backend_killed_again_and_again_answers_each_request_once() {
    let mut host = Host::new(Setup::default());
    let mut guest = host.guest();
    let w = Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 4096,
        queue_depth: 16,
        duration: RUN,
        max_ops: None,
        verify: true,
        fresh: true,
        // Small, so that a block is read and written again and again.
        region: Some(8 << 20),
        flush_every: Some(8),
        seed: 0x5eed_4b11,
        rate: None,
    };
    let worker = std::thread::spawn(move || run(&mut guest.front, &w, &mut |_| {}));
    let mut rng = Rng::new(0x4b11);
    let end = Instant::now() + RUN - Duration::from_secs(1);
    let mut kills = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
        host.cluster.kill_disk(&host.spec).unwrap();
        host.cluster.serve_disk(&host.spec, &[]).unwrap();
        kills += 1;
    }
    let report = worker.join().expect("the guest thread panicked");
    let mut log = std::fs::read_to_string(host.cluster.backend_log(&host.spec)).unwrap();
    if report.is_err() {
        let stats = crate::harness::ctl(&host, &["stats", "--output", "json"]);
        log.push_str(&String::from_utf8_lossy(&stats.stdout));
    }
    let report = report.unwrap_or_else(|e| panic!("guest failed after {kills} kills: {e}\n{log}"));
    assert_eq!(
        (report.errors, report.mismatches),
        (0, 0),
        "after {kills} kills: {report:?}"
    );
    assert!(kills >= 20, "only {kills} kills");
    assert!(
        log.contains("requests of the previous backend taken from the journal"),
        "no restarted backend ever replayed the journal:\n{log}"
    );
}

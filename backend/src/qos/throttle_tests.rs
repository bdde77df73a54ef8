//! The throttle on a clock the tests move: no sleeping.

use std::time::{Duration, Instant};

use super::*;

/// What a simulated guest got done.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    requests: u64,
    bytes: u64,
}

/// A guest that always has a request waiting: each starts as soon as the throttle allows,
/// and the clock jumps by the wait it is told (rounded up to `tick`, as a poll timeout in
/// whole milliseconds is), for `secs` seconds from `t0`.
fn drive(t: &Throttle, t0: Instant, secs: u64, tick: Duration, cost: Cost) -> Done {
    let end = t0 + Duration::from_secs(secs);
    let mut now = t0;
    let mut done = Done::default();
    while now < end {
        match t.admit(cost, now) {
            Ok(()) => {
                done.requests += 1;
                done.bytes += cost.bytes;
            }
            Err(wait) => {
                assert!(wait > Duration::ZERO && wait <= MAX_WAIT, "{wait:?}");
                now += round_up(wait, tick);
            }
        }
    }
    done
}

fn round_up(d: Duration, tick: Duration) -> Duration {
    if tick.is_zero() {
        return d;
    }
    let ticks = d.as_nanos().div_ceil(tick.as_nanos());
    tick * u32::try_from(ticks).unwrap()
}

fn limits(list: &str) -> QosLimits {
    QosLimits::parse_list(list).unwrap()
}

const READ_4K: Cost = Cost {
    write: false,
    bytes: 4096,
};
const WRITE_4K: Cost = Cost {
    write: true,
    bytes: 4096,
};
const MS: Duration = Duration::from_millis(1);

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= want * tolerance
}

#[test]
fn an_iops_limit_holds_over_ten_seconds_with_exact_and_millisecond_wake_ups() {
    for tick in [Duration::ZERO, MS] {
        let t0 = Instant::now();
        let t = Throttle::new(&limits("iops-total=1000"), t0);
        let d = drive(&t, t0, 10, tick, READ_4K);
        // 10 s at 1000/s, plus the first tenth of a second's worth at once.
        assert!(
            within(d.requests as f64, 10_100.0, 0.002),
            "{tick:?}: {d:?}"
        );
    }
}

#[test]
fn a_bandwidth_limit_counts_bytes() {
    let t0 = Instant::now();
    let t = Throttle::new(&limits("bps-total=10485760"), t0);
    let big = Cost {
        write: true,
        bytes: 256 << 10,
    };
    let d = drive(&t, t0, 10, MS, big);
    assert!(
        within(d.bytes as f64, 10.1 * 10_485_760.0, 0.01),
        "{d:?}: {} MiB/s",
        d.bytes as f64 / 10.0 / 1_048_576.0
    );
}

#[test]
fn read_and_write_limits_are_separate() {
    let t0 = Instant::now();
    let t = Throttle::new(&limits("iops-read=100,iops-write=1000"), t0);
    // A reader and a writer at once: the full read bucket does not hold the writes.
    let [reads, writes] = two_streams(&t, t0, [READ_4K, WRITE_4K]);
    assert!(within(reads as f64, 1010.0, 0.01), "{reads}");
    assert!(within(writes as f64, 10_100.0, 0.01), "{writes}");
}

#[test]
fn a_total_limit_holds_reads_and_writes_together() {
    let t0 = Instant::now();
    let t = Throttle::new(&limits("iops-total=200"), t0);
    let mut now = t0;
    let mut started = 0u64;
    let end = t0 + Duration::from_secs(10);
    while now < end {
        let cost = if started % 2 == 0 { READ_4K } else { WRITE_4K };
        match t.admit(cost, now) {
            Ok(()) => started += 1,
            Err(wait) => now += wait,
        }
    }
    assert!(within(started as f64, 2020.0, 0.01), "{started}");
}

#[test]
fn iops_size_counts_large_requests_as_several() {
    let t0 = Instant::now();
    let t = Throttle::new(&limits("iops-total=400,iops-size=4096"), t0);
    let large = Cost {
        write: false,
        bytes: 16 << 10,
    };
    let d = drive(&t, t0, 10, MS, large);
    // Each counts as 4: 100 a second.
    assert!(within(d.requests as f64, 1010.0, 0.01), "{d:?}");
    let t = Throttle::new(&limits("iops-total=400,iops-size=4096"), t0);
    let small = Cost {
        write: false,
        bytes: 512,
    };
    let d = drive(&t, t0, 10, MS, small);
    assert!(
        within(d.requests as f64, 4040.0, 0.01),
        "small ones count as one: {d:?}"
    );
}

/// Two rings, each always with a request of its `costs` waiting, for ten seconds: the one
/// whose wake-up comes first asks first (a tie goes to either, as threads race for the lock),
/// and each sleeps for the wait it was told (in whole milliseconds); how many each started.
fn two_streams(t: &Throttle, t0: Instant, costs: [Cost; 2]) -> [u64; 2] {
    let mut wake = [t0, t0];
    let mut started = [0u64; 2];
    let end = t0 + Duration::from_secs(10);
    let mut coin = 0x2545_f491_u32;
    while wake.iter().any(|w| *w < end) {
        let ring = match wake[0].cmp(&wake[1]) {
            std::cmp::Ordering::Equal => {
                coin ^= coin << 13;
                coin ^= coin >> 17;
                coin ^= coin << 5;
                usize::from(coin & 1 == 1)
            }
            other => usize::from(other == std::cmp::Ordering::Greater),
        };
        match t.admit(costs[ring], wake[ring]) {
            Ok(()) => started[ring] += 1,
            Err(wait) => wake[ring] += round_up(wait, MS),
        }
    }
    started
}

#[test]
fn two_rings_share_one_limit() {
    let t0 = Instant::now();
    let t = Throttle::new(&limits("iops-total=500"), t0);
    let started = two_streams(&t, t0, [READ_4K, WRITE_4K]);
    let total = started[0] + started[1];
    assert!(within(total as f64, 5050.0, 0.01), "{started:?}");
    assert!(
        started.iter().all(|n| *n > 1000),
        "both rings got turns: {started:?}"
    );
}

#[test]
fn a_burst_allows_max_then_avg() {
    let t0 = Instant::now();
    let t = Throttle::new(
        &limits("iops-total=100,iops-total-max=1000,iops-total-max-length=3"),
        t0,
    );
    let first = drive(&t, t0, 1, MS, READ_4K);
    assert!(within(first.requests as f64, 1100.0, 0.02), "{first:?}");
    let rest = drive(&t, t0 + Duration::from_secs(1), 9, MS, READ_4K);
    // The bucket (3000) fills at 900/s: full after about 3.2 s at 1000/s (3300 requests),
    // then 100/s for the remaining 6.8 s.
    let all = first.requests + rest.requests;
    assert!((3900..=4100).contains(&all), "{first:?} {rest:?}");
}

#[test]
fn waits_are_capped_and_time_never_runs_backwards() {
    let t0 = Instant::now() + Duration::from_secs(5);
    let t = Throttle::new(&limits("bps-total=1"), t0);
    assert!(t.admit(READ_4K, t0).is_ok(), "an empty bucket lets one in");
    assert_eq!(t.admit(READ_4K, t0), Err(MAX_WAIT), "4096 s away, capped");
    // An earlier time (another ring read the clock first) leaks nothing and is no error.
    let before = t0 - Duration::from_secs(5);
    assert_eq!(t.admit(READ_4K, before), Err(MAX_WAIT));
    let unlimited = Throttle::new(&QosLimits::default(), t0);
    let d = drive(&unlimited, t0, 0, MS, READ_4K);
    assert_eq!(d.requests, 0, "no time, no turns");
    for _ in 0..10_000 {
        assert!(unlimited.admit(WRITE_4K, t0).is_ok());
    }
}

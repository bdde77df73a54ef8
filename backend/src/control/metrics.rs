//! Counters in Prometheus' text exposition format (version 0.0.4).

use std::fmt::Write;

use super::proto::DeviceReport;
use crate::stats::{LATENCY_BUCKETS, StatsSnapshot, latency_bucket_limit_us};

/// One counter: its name (after `rustbk_`), help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&StatsSnapshot) -> u64);

const COUNTERS: &[Counter] = &[
    ("requests_total", "Requests taken off the ring.", |s| {
        s.requests
    }),
    ("responses_total", "Responses put on the ring.", |s| {
        s.responses
    }),
    ("reads_total", "Completed read requests.", |s| s.reads),
    ("writes_total", "Completed write requests.", |s| s.writes),
    (
        "flushes_total",
        "Completed flush and barrier requests.",
        |s| s.flushes,
    ),
    ("discards_total", "Completed discard requests.", |s| {
        s.discards
    }),
    ("read_bytes_total", "Bytes read for the guest.", |s| {
        s.bytes_read
    }),
    ("written_bytes_total", "Bytes written for the guest.", |s| {
        s.bytes_written
    }),
    ("errors_total", "Requests answered with an error.", |s| {
        s.errors
    }),
    (
        "bad_requests_total",
        "Requests refused as malformed.",
        |s| s.bad_requests,
    ),
    ("kicks_in_total", "Notifications from the guest.", |s| {
        s.kicks_in
    }),
    ("kicks_out_total", "Notifications to the guest.", |s| {
        s.kicks_out
    }),
    (
        "ring_full_total",
        "Times every ring slot was outstanding.",
        |s| s.ring_full,
    ),
    (
        "persistent_grant_hits_total",
        "Data pages found among persistent grants.",
        |s| s.persistent_hits,
    ),
    (
        "persistent_grant_misses_total",
        "Data pages mapped afresh.",
        |s| s.persistent_misses,
    ),
    (
        "qos_held_total",
        "Requests the disk's I/O limits held back.",
        |s| s.qos_held,
    ),
];

/// The counters of `devices` (each with its stats) in Prometheus' text format, labelled by
/// domid and devid.
pub fn prometheus_text(devices: &[DeviceReport]) -> String {
    let mut out = String::new();
    let with_stats: Vec<(&DeviceReport, &StatsSnapshot)> = devices
        .iter()
        .filter_map(|d| d.stats.as_ref().map(|s| (d, s)))
        .collect();
    for (name, help, read) in COUNTERS {
        let _ = writeln!(out, "# HELP rustbk_{name} {help}");
        let _ = writeln!(out, "# TYPE rustbk_{name} counter");
        for (d, s) in &with_stats {
            let _ = writeln!(out, "rustbk_{name}{{{}}} {}", labels(d), read(s));
        }
    }
    gauges(&mut out, &with_stats);
    histogram(&mut out, &with_stats);
    out
}

fn labels(d: &DeviceReport) -> String {
    format!("domid=\"{}\",devid=\"{}\"", d.domid, d.devid)
}

fn gauges(out: &mut String, devices: &[(&DeviceReport, &StatsSnapshot)]) {
    let _ = writeln!(
        out,
        "# HELP rustbk_persistent_grants Grants kept mapped now."
    );
    let _ = writeln!(out, "# TYPE rustbk_persistent_grants gauge");
    for (d, s) in devices {
        let _ = writeln!(
            out,
            "rustbk_persistent_grants{{{}}} {}",
            labels(d),
            s.persistent_cached
        );
    }
    let _ = writeln!(out, "# HELP rustbk_paused Whether the device is paused.");
    let _ = writeln!(out, "# TYPE rustbk_paused gauge");
    for (d, _) in devices {
        let _ = writeln!(
            out,
            "rustbk_paused{{{}}} {}",
            labels(d),
            u8::from(d.status.paused)
        );
    }
}

/// The latency histogram, with cumulative buckets as Prometheus wants them.
fn histogram(out: &mut String, devices: &[(&DeviceReport, &StatsSnapshot)]) {
    let name = "rustbk_request_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from leaving the ring to the response."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (d, s) in devices {
        let mut total = 0u64;
        for i in 0..LATENCY_BUCKETS {
            total = total.wrapping_add(s.latency_us[i]);
            let le = match latency_bucket_limit_us(i) {
                Some(us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{},le=\"{le}\"}} {total}", labels(d));
        }
        let sum = s.latency_us_sum as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{}}} {sum}", labels(d));
        let _ = writeln!(out, "{name}_count{{{}}} {total}", labels(d));
    }
}

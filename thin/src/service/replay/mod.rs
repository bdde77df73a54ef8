//! Crash replay of a served pool, both devices recorded in one ordered log.
//!
//! A pool service runs in this process; a worker thread per volume serves it over the socket
//! as a guest's worker would (its own handle on the data device, its own recorder), doing
//! partial- and whole-block writes (zero fills, copy-on-write after the live snapshots taken
//! through the admin channel), discards and flushes. Recorders on the pool's metadata and
//! data files and on every worker's data file write one log, so the order across devices and
//! processes is known. Three workloads are recorded: power cut only; a worker killed (its
//! connection cut, its ops abandoned) while the rest goes on; the service killed while the
//! workers go on writing. Each is then cut at random points (half of them just after a
//! commit): the events before the last sync of their device land, each later one lands, lands
//! torn or not; after a service kill its later events never happen. Every crashed pool passes
//! rustbk's check (no leaked block, also of a killed worker's) and thin_check, opens, and
//! every volume reads back what the model allows: whatever was acknowledged before its last
//! completed flush, and a snapshot what its origin held when it was taken.

mod check;
mod log;
mod model;
mod record;
mod rng;
mod workload;

use std::time::Instant;

use rustbk_formats::EngineKind;

use check::Totals;
use log::{Crash, commit_points};
use record::{Options, Recording, Scenario, record};
use rng::Rng;

/// Crashes replayed in all.
const CUTS: usize = 200;
/// Ops of each worker.
const OPS: usize = 240;

/// A random crash of `rec`: half at any point, half just after a commit; two in three after
/// a kill if there was one. After the service was killed, its later events are left out.
fn pick_crash(rec: &Recording, points: &[usize], rng: &mut Rng) -> Crash {
    let n = rec.events.len();
    let kill = rec.service_dead_at.or(rec.killed.map(|k| k.at));
    let from = match kill {
        Some(at) if rng.below(3) != 0 => at,
        _ => rec.start,
    };
    let later: Vec<usize> = points.iter().copied().filter(|p| *p >= from).collect();
    let cut = match rng.below(2) {
        0 if !later.is_empty() => (later[rng.index(later.len())] + rng.index(3)).min(n),
        _ => from + rng.index(n - from + 1),
    };
    let service_dead_at = rec.service_dead_at.filter(|dead| cut > *dead);
    Crash {
        cut,
        service_dead_at,
    }
}

/// Replays `cuts` crashes of `rec`; the first that fails, and why.
fn replay(rec: &Recording, cuts: usize, rng: &mut Rng, totals: &mut Totals) -> Option<String> {
    let points = commit_points(&rec.events, rec.start);
    for i in 0..cuts {
        // The first is at the very end: everything synced landed.
        let crash = match i {
            0 => Crash {
                cut: rec.events.len(),
                service_dead_at: rec.service_dead_at,
            },
            _ => pick_crash(rec, &points, rng),
        };
        let both = totals.crashes % 10 == 0;
        if let Err(why) = check::check_crash(rec, crash, rng, (both, totals)) {
            return Some(format!("{crash:?} of {} events: {why}", rec.events.len()));
        }
        totals.crashes += 1;
    }
    None
}

fn options(scenario: Scenario, engine: EngineKind, passdown: bool, seed: u64) -> Options {
    Options {
        scenario,
        engine,
        passdown,
        broken: false,
        ops: OPS,
        seed,
    }
}

fn describe(rec: &Recording) -> String {
    let flushes: Vec<usize> = rec.outcomes.iter().map(|o| o.flushes).collect();
    let failed: Vec<usize> = rec.outcomes.iter().map(|o| o.failed).collect();
    format!(
        "{} events, {} commit points, worker flushes {flushes:?}, failed ops {failed:?}, \
         worker killed: {:?}, service killed at {:?}",
        rec.events.len(),
        commit_points(&rec.events, rec.start).len(),
        rec.killed,
        rec.service_dead_at
    )
}

#[test]
fn served_pool_survives_power_cuts_and_kills_of_workers_and_service_at_200_points() {
    let seed = rng::seed("thin service replay");
    let mut rng = Rng::new(seed);
    let runs = [
        options(Scenario::PowerCut, EngineKind::Auto, true, rng.next_u64()),
        options(
            Scenario::KillWorker,
            EngineKind::Sync,
            false,
            rng.next_u64(),
        ),
        options(
            Scenario::KillService,
            EngineKind::Auto,
            false,
            rng.next_u64(),
        ),
    ];
    let mut totals = Totals::default();
    for (i, opts) in runs.iter().enumerate() {
        let started = Instant::now();
        let rec = record(*opts);
        let recorded = started.elapsed();
        let failed = rec.outcomes.iter().any(|o| o.failed > 0);
        let killed = opts.scenario == Scenario::KillService;
        assert_eq!(failed, killed, "ops failed or not: {}", describe(&rec));
        let cuts = CUTS * (i + 1) / runs.len() - CUTS * i / runs.len();
        if let Some(why) = replay(&rec, cuts, &mut rng, &mut totals) {
            panic!("{:?}: {why}", opts.scenario);
        }
        println!(
            "{:?}: {}; recorded in {recorded:?}, {cuts} crashes checked in {:?}",
            opts.scenario,
            describe(&rec),
            started.elapsed() - recorded
        );
    }
    println!("{totals:?}");
    assert_eq!(totals.crashes, CUTS);
}

#[test]
fn replay_notices_commits_that_do_not_sync_the_data_device_first() {
    let seed = rng::seed("thin service replay, broken order");
    let mut rng = Rng::new(seed);
    let opts = Options {
        broken: true,
        ..options(Scenario::PowerCut, EngineKind::Sync, false, rng.next_u64())
    };
    let rec = record(opts);
    let found = replay(&rec, CUTS, &mut rng, &mut Totals::default());
    println!("broken order ({}): {found:?}", describe(&rec));
    assert!(
        found.is_some(),
        "commits without a data sync went unnoticed"
    );
}

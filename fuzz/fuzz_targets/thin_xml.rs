//! Fuzzes the thin_dump XML parser: a hostile document must give an error or a canonical model
//! that the writer prints and the parser reads back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustbk_thin::xml::{self, Dump, MappingRun};

/// Checks the promises of a parsed device's runs: non-empty, no overflow, sorted, apart, and
/// merged wherever one continues the other.
fn check_runs(runs: &[MappingRun]) {
    for run in runs {
        assert!(run.length > 0);
        assert!(run.origin_end().is_some() && run.data_end().is_some());
    }
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a.origin_end().unwrap();
        assert!(a_end <= b.origin_begin, "{a:?} overlaps {b:?}");
        let continues =
            a_end == b.origin_begin && a.data_end() == Some(b.data_begin) && a.time == b.time;
        assert!(!continues, "{a:?} and {b:?} were not merged");
    }
}

fn check(dump: &Dump) {
    let mut ids: Vec<u32> = dump.devices.iter().map(|d| d.dev_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), dump.devices.len());
    for device in &dump.devices {
        check_runs(&device.mappings);
    }
    let mut text = Vec::new();
    xml::write(dump, &mut text).expect("a parsed dump is writable");
    let again = xml::parse(&text[..]).expect("the writer's output parses");
    assert_eq!(&again, dump);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(dump) = xml::parse(data) {
        check(&dump);
    }
});

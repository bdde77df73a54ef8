//! `check` on pools written by the peer tools: thin_restore of thin-provisioning-tools 0.9 and
//! 1.1 lay out trees and space maps their own way, and `check` finds no problem in either.

mod common;

use common::peers::{self, Peer};
use rustbk_thin::check::{self, CheckOptions, Report};

/// Two devices that map the same 1000 data blocks (every other one, so no two merge into a
/// run and the trees have several leaves), written plainly or, for 1.1, as one shared `def`.
fn xml(shared_def: bool) -> String {
    let mut runs = String::new();
    for i in 0..1000u64 {
        runs += &format!(
            "<range_mapping origin_begin=\"{i}\" data_begin=\"{}\" length=\"1\" time=\"0\"/>\n",
            i * 2
        );
    }
    let (def, body) = match shared_def {
        true => (
            format!("<def name=\"shared\">\n{runs}</def>\n"),
            "<ref name=\"shared\"/>\n".to_owned(),
        ),
        false => (String::new(), runs),
    };
    let device = |id: u32, created: u32| {
        format!(
            "<device dev_id=\"{id}\" mapped_blocks=\"1000\" transaction=\"0\" \
             creation_time=\"{created}\" snap_time=\"1\">\n{body}</device>\n"
        )
    };
    format!(
        "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" \
         data_block_size=\"128\" nr_data_blocks=\"4096\">\n{def}{}{}</superblock>\n",
        device(1, 0),
        device(2, 1)
    )
}

fn restore_and_check(peer: Peer, shared_def: bool) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let meta = peers::restore_str(peer, dir.path(), "pool", &xml(shared_def)).unwrap();
    peers::thin_check(peer, &meta).unwrap();
    check::check_path(&meta, &CheckOptions::default()).unwrap()
}

fn assert_clean_with_two_devices_sharing_1000_blocks(report: &Report) {
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.totals.devices, 2);
    assert_eq!(report.totals.mappings, 2000);
    assert_eq!(report.totals.data_blocks_used, 1000);
}

#[test]
fn pool_restored_by_thin_restore_0_9_checks_clean() {
    let report = restore_and_check(Peer::V0_9, false);
    assert_clean_with_two_devices_sharing_1000_blocks(&report);
}

#[test]
fn pool_restored_by_thin_restore_1_1_checks_clean() {
    let report = restore_and_check(Peer::V1_1, false);
    assert_clean_with_two_devices_sharing_1000_blocks(&report);
}

#[test]
fn pool_with_leaves_shared_by_thin_restore_1_1_checks_clean() {
    let report = restore_and_check(Peer::V1_1, true);
    assert_clean_with_two_devices_sharing_1000_blocks(&report);
}

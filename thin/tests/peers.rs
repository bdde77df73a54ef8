//! The XML model against the real thin-provisioning-tools 0.9 and 1.1: what rustbk writes they
//! restore and check, and what they dump rustbk parses back to the same model.

mod common;

use std::path::Path;

use common::peers::{self, Peer, restore_str, thin_check, thin_dump};
use rustbk_thin::xml::{self, DeviceDump, Dump, MappingRun, SuperblockInfo};

fn run(origin_begin: u64, data_begin: u64, length: u64, time: u32) -> MappingRun {
    MappingRun {
        origin_begin,
        data_begin,
        length,
        time,
    }
}

/// A pool with an origin (device 1) and a snapshot of it (device 2) taken at time 1: they share
/// data blocks 0..4 and 20; since then each wrote block 11 to a block of its own.
fn origin_and_snapshot() -> Dump {
    Dump {
        superblock: SuperblockInfo {
            uuid: String::new(),
            time: 1,
            transaction: 2,
            flags: 0,
            version: 2,
            data_block_size: 128,
            nr_data_blocks: 1000,
            metadata_snap: None,
        },
        devices: vec![
            DeviceDump {
                dev_id: 1,
                mapped_blocks: 8,
                transaction: 0,
                creation_time: 0,
                snap_time: 1,
                mappings: vec![run(0, 0, 4, 0), run(10, 20, 1, 0), run(11, 21, 3, 1)],
            },
            DeviceDump {
                dev_id: 2,
                mapped_blocks: 6,
                transaction: 1,
                creation_time: 1,
                snap_time: 1,
                mappings: vec![run(0, 0, 4, 0), run(10, 20, 1, 0), run(11, 30, 1, 1)],
            },
        ],
    }
}

fn to_xml(dump: &Dump) -> String {
    let mut out = Vec::new();
    xml::write(dump, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn parse(text: &str) -> Dump {
    xml::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn each_peer_restores_checks_and_dumps_a_pool_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let model = origin_and_snapshot();
    for peer in Peer::ALL {
        let name = format!("pool-{peer:?}");
        let metadata = restore_str(peer, dir.path(), &name, &to_xml(&model)).unwrap();
        thin_check(peer, &metadata).unwrap();
        let dumped = thin_dump(peer, &metadata).unwrap();
        assert_eq!(parse(&dumped), model, "{peer:?} dumped:\n{dumped}");
    }
}

#[test]
fn dumps_by_0_9_and_1_1_differ_in_layout_but_parse_to_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = origin_and_snapshot();
    let metadata = restore_str(Peer::V1_1, dir.path(), "pool", &to_xml(&model)).unwrap();
    let old = thin_dump(Peer::V0_9, &metadata).unwrap();
    let new = thin_dump(Peer::V1_1, &metadata).unwrap();
    // 0.9 always prints flags and ends with a newline; 1.1 leaves out flags="0" and the newline.
    assert!(
        old.contains(r#" flags="0" "#) && old.ends_with("</superblock>\n"),
        "{old}"
    );
    assert!(
        !new.contains("flags=") && new.ends_with("</superblock>"),
        "{new}"
    );
    assert_eq!(old.replace(r#" flags="0""#, "").trim_end(), new);
    assert_eq!(parse(&old), parse(&new));
    // rustbk's writer prints 0.9's layout byte for byte.
    assert_eq!(to_xml(&parse(&new)), old);
}

/// A pool whose two devices share leaves of the mapping tree, as a snapshot does: restored from
/// a `def` that both devices `ref`.
fn shared_leaves_xml() -> String {
    let mut xml = String::from(
        "<superblock uuid=\"\" time=\"1\" transaction=\"3\" version=\"2\" \
         data_block_size=\"128\" nr_data_blocks=\"4096\">\n<def name=\"shared\">\n",
    );
    // Every other data block, so that no two mappings merge and the def fills several leaves.
    for block in 0..600u64 {
        xml += &format!(
            "<single_mapping origin_block=\"{block}\" data_block=\"{}\" time=\"0\"/>\n",
            2 * block
        );
    }
    xml += "</def>\n\
        <device dev_id=\"1\" mapped_blocks=\"611\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n\
        <ref name=\"shared\"/>\n\
        <range_mapping origin_begin=\"600\" data_begin=\"1199\" length=\"11\" time=\"1\"/>\n\
        </device>\n\
        <device dev_id=\"2\" mapped_blocks=\"600\" transaction=\"1\" creation_time=\"1\" snap_time=\"1\">\n\
        <ref name=\"shared\"/>\n\
        </device>\n</superblock>\n";
    xml
}

#[test]
fn shared_leaves_dump_as_def_and_ref_in_1_1_and_parse_like_0_9_s_expanded_dump() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = restore_str(Peer::V1_1, dir.path(), "shared", &shared_leaves_xml()).unwrap();
    for peer in Peer::ALL {
        thin_check(peer, &metadata).unwrap();
    }
    let old = thin_dump(Peer::V0_9, &metadata).unwrap();
    let new = thin_dump(Peer::V1_1, &metadata).unwrap();
    assert!(!old.contains("<def") && !old.contains("<ref"), "{old}");
    assert!(new.contains("<def ") && new.contains("<ref "), "{new}");
    let model = parse(&old);
    assert_eq!(parse(&new), model);
    assert_eq!(model.devices[0].counted_blocks(), Some(611));
    assert_eq!(model.devices[1].counted_blocks(), Some(600));
    // The restore read the def through rustbk's parser's eyes too.
    assert_eq!(parse(&shared_leaves_xml()), model);
}

#[test]
fn thin_check_1_1_rejects_a_device_whose_mapped_blocks_is_wrong_and_0_9_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = origin_and_snapshot();
    model.devices[0].mapped_blocks = 99;
    // 1.1's thin_restore stores mapped_blocks as given; 0.9's counts the mappings itself.
    let metadata = restore_str(Peer::V1_1, dir.path(), "wrong", &to_xml(&model)).unwrap();
    thin_check(Peer::V0_9, &metadata).unwrap();
    let report = thin_check(Peer::V1_1, &metadata).unwrap_err();
    assert!(
        report.contains("Thin device 1 has unexpected number of mappings, expected 99, actual 8"),
        "{report}"
    );
    let recounted = restore_str(Peer::V0_9, dir.path(), "recounted", &to_xml(&model)).unwrap();
    let dumped = parse(&thin_dump(Peer::V1_1, &recounted).unwrap());
    assert_eq!(dumped.devices[0].mapped_blocks, 8);
}

/// Two devices sharing the leaves of one long run of 500 blocks; device 1 continues the run
/// with 10 blocks of its own.
fn shared_run_xml() -> &'static str {
    r#"<superblock uuid="" time="1" transaction="3" version="2" data_block_size="128" nr_data_blocks="4096">
<def name="run"><range_mapping origin_begin="0" data_begin="0" length="500" time="0"/></def>
<device dev_id="1" mapped_blocks="510" transaction="0" creation_time="0" snap_time="1">
<ref name="run"/><range_mapping origin_begin="500" data_begin="500" length="10" time="0"/>
</device>
<device dev_id="2" mapped_blocks="500" transaction="1" creation_time="1" snap_time="1"><ref name="run"/></device>
</superblock>
"#
}

#[test]
fn a_run_that_1_1_splits_at_a_ref_parses_like_0_9_s_single_range() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = restore_str(Peer::V1_1, dir.path(), "split", shared_run_xml()).unwrap();
    let old = thin_dump(Peer::V0_9, &metadata).unwrap();
    let new = thin_dump(Peer::V1_1, &metadata).unwrap();
    // 0.9 prints one range per device; 1.1 prints the shared leaves as a def and starts a new
    // range_mapping after each ref.
    assert_eq!(old.matches("<range_mapping").count(), 2, "{old}");
    assert!(new.contains("<ref "), "{new}");
    assert!(new.matches("<range_mapping").count() > 2, "{new}");
    let model = parse(&new);
    assert_eq!(model, parse(&old));
    assert_eq!(model.devices[0].mappings, vec![run(0, 0, 510, 0)]);
    assert_eq!(model.devices[1].mappings, vec![run(0, 0, 500, 0)]);
}

fn stdout_of(peer: Peer, tool: &str, args: &[&str]) -> String {
    let args: Vec<&Path> = args.iter().map(Path::new).collect();
    let output = peers::run(peer, tool, &args);
    assert!(output.status.success(), "{tool} of {peer:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn thin_ls_thin_delta_and_thin_repair_of_both_peers_agree_on_a_restored_pool() {
    let dir = tempfile::tempdir().unwrap();
    let model = origin_and_snapshot();
    let metadata = restore_str(Peer::V1_1, dir.path(), "pool", &to_xml(&model)).unwrap();
    let meta = metadata.to_str().unwrap();
    let [ls_old, ls_new] = Peer::ALL.map(|peer| stdout_of(peer, "thin_ls", &[meta]));
    assert_eq!(ls_old, ls_new);
    // 8 and 6 blocks of 64 KiB (128 sectors).
    assert!(
        ls_old.contains("  1 512KiB") && ls_old.contains("  2 384KiB"),
        "{ls_old}"
    );
    let delta = ["--snap1", "1", "--snap2", "2", meta];
    let [delta_old, delta_new] = Peer::ALL.map(|peer| stdout_of(peer, "thin_delta", &delta));
    assert_eq!(delta_old.trim_end(), delta_new.trim_end());
    assert!(
        delta_old.contains(r#"<same begin="0" length="4"/>"#),
        "{delta_old}"
    );
    for peer in Peer::ALL {
        let repaired = dir.path().join(format!("repaired-{peer:?}"));
        peers::new_metadata_file(&repaired, peers::DEFAULT_METADATA_BYTES);
        stdout_of(
            peer,
            "thin_repair",
            &["-i", meta, "-o", repaired.to_str().unwrap()],
        );
        thin_check(peer, &repaired).unwrap();
        assert_eq!(parse(&thin_dump(peer, &repaired).unwrap()), model);
    }
}

//! Tests of the XML model, parser and writer.

use super::read::{Limits, parse_with};
use super::*;

/// What thin_dump 0.9.0 prints for a pool of two devices (byte for byte, final newline included).
const DUMP_0_9: &str = r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <device dev_id="1" mapped_blocks="6" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="20" time="0"/>
    <single_mapping origin_block="11" data_block="21" time="1"/>
  </device>
  <device dev_id="2" mapped_blocks="5" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="30" time="1"/>
  </device>
</superblock>
"#;

fn run(origin_begin: u64, data_begin: u64, length: u64, time: u32) -> MappingRun {
    MappingRun {
        origin_begin,
        data_begin,
        length,
        time,
    }
}

fn device(dev_id: u32, mappings: Vec<MappingRun>) -> DeviceDump {
    DeviceDump {
        dev_id,
        mapped_blocks: mappings.iter().map(|r| r.length).sum(),
        transaction: 0,
        creation_time: 0,
        snap_time: 0,
        mappings,
    }
}

fn superblock() -> SuperblockInfo {
    SuperblockInfo {
        uuid: String::new(),
        time: 1,
        transaction: 2,
        flags: 0,
        version: 2,
        data_block_size: 128,
        nr_data_blocks: 1000,
        metadata_snap: None,
    }
}

fn example() -> Dump {
    Dump {
        superblock: superblock(),
        devices: vec![
            DeviceDump {
                snap_time: 1,
                ..device(
                    1,
                    vec![run(0, 0, 4, 0), run(10, 20, 1, 0), run(11, 21, 1, 1)],
                )
            },
            DeviceDump {
                transaction: 1,
                creation_time: 1,
                snap_time: 1,
                ..device(2, vec![run(0, 0, 4, 0), run(10, 30, 1, 1)])
            },
        ],
    }
}

fn to_xml(dump: &Dump) -> String {
    let mut out = Vec::new();
    write(dump, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn parse_str(xml: &str) -> Result<Dump, Error> {
    parse(xml.as_bytes())
}

/// A document with `body` inside the example superblock.
fn in_superblock(body: &str) -> String {
    format!(
        "<superblock uuid=\"\" time=\"1\" transaction=\"2\" version=\"2\" \
         data_block_size=\"128\" nr_data_blocks=\"1000\">\n{body}\n</superblock>\n"
    )
}

/// A document with `body` inside device 1 of a superblock.
fn in_device(body: &str) -> String {
    in_superblock(&format!(
        "<device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" \
         snap_time=\"0\">\n{body}\n</device>"
    ))
}

#[test]
fn parses_a_thin_dump_0_9_document_into_the_model() {
    assert_eq!(parse_str(DUMP_0_9).unwrap(), example());
}

#[test]
fn writes_exactly_what_thin_dump_0_9_prints() {
    assert_eq!(to_xml(&example()), DUMP_0_9);
}

#[test]
fn thin_dump_1_1_layout_without_flags_parses_to_the_same_model() {
    // 1.1 leaves out flags="0" and the final newline.
    let dump_1_1 = DUMP_0_9.replace(" flags=\"0\"", "");
    assert_eq!(parse_str(dump_1_1.trim_end()).unwrap(), example());
}

#[test]
fn optional_fields_and_escaped_text_round_trip() {
    let mut dump = example();
    dump.superblock.uuid = "a\"b<c>&d'e".to_owned();
    dump.superblock.metadata_snap = Some(77);
    dump.superblock.flags = 1;
    dump.devices.push(device(9, Vec::new()));
    let xml = to_xml(&dump);
    assert!(xml.contains("metadata_snap=\"77\""), "{xml}");
    assert_eq!(parse_str(&xml).unwrap(), dump);
}

#[test]
fn a_pool_without_devices_round_trips() {
    let dump = Dump {
        superblock: superblock(),
        devices: Vec::new(),
    };
    assert_eq!(parse_str(&to_xml(&dump)).unwrap(), dump);
}

#[test]
fn writer_merges_runs_that_continue_each_other_into_one_range() {
    let dump = Dump {
        superblock: superblock(),
        devices: vec![device(
            1,
            vec![run(0, 5, 1, 3), run(1, 6, 2, 3), run(3, 8, 1, 3)],
        )],
    };
    let xml = to_xml(&dump);
    assert!(
        xml.contains(r#"<range_mapping origin_begin="0" data_begin="5" length="4" time="3"/>"#),
        "{xml}"
    );
    assert_eq!(xml.matches("_mapping").count(), 1, "{xml}");
}

#[test]
fn writer_keeps_runs_apart_when_time_data_or_thin_block_breaks_the_sequence() {
    let runs = vec![
        run(0, 0, 1, 0),
        run(1, 1, 1, 1), // other time
        run(2, 3, 1, 1), // data gap
        run(4, 4, 1, 1), // thin gap
        run(5, 5, 2, 1), // continues the previous: merged
        run(7, 6, 1, 1), // data goes back
    ];
    let dump = Dump {
        superblock: superblock(),
        devices: vec![device(1, runs)],
    };
    let xml = to_xml(&dump);
    assert_eq!(xml.matches("<single_mapping").count(), 4, "{xml}");
    assert!(
        xml.contains(r#"<range_mapping origin_begin="4" data_begin="4" length="3" time="1"/>"#),
        "{xml}"
    );
}

#[test]
fn parser_sorts_and_merges_runs_split_across_elements() {
    let xml = in_device(
        r#"<single_mapping origin_block="3" data_block="13" time="2"/>
           <range_mapping origin_begin="0" data_begin="10" length="2" time="2"/>
           <single_mapping origin_block="2" data_block="12" time="2"/>"#,
    );
    let dump = parse_str(&xml).unwrap();
    assert_eq!(dump.devices[0].mappings, vec![run(0, 10, 4, 2)]);
}

#[test]
fn refs_expand_to_their_def_and_merge_with_the_device_s_own_runs() {
    // As thin_dump 1.1 prints shared leaves: a def, then refs in the devices.
    let xml = in_superblock(
        r#"<def name="1">
             <range_mapping origin_begin="0" data_begin="100" length="3" time="0"/>
           </def>
           <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
             <ref name="1"/>
             <range_mapping origin_begin="3" data_begin="103" length="2" time="0"/>
           </device>
           <device dev_id="2" mapped_blocks="4" transaction="0" creation_time="1" snap_time="1">
             <ref name="1"/>
             <single_mapping origin_block="7" data_block="200" time="1"/>
           </device>"#,
    );
    let dump = parse_str(&xml).unwrap();
    assert_eq!(dump.devices[0].mappings, vec![run(0, 100, 5, 0)]);
    assert_eq!(
        dump.devices[1].mappings,
        vec![run(0, 100, 3, 0), run(7, 200, 1, 1)]
    );
    assert_eq!(dump.devices[1].counted_blocks(), Some(4));
}

#[test]
fn declaration_comments_and_empty_device_elements_are_accepted() {
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!-- a pool -->\n{}",
        in_superblock(
            r#"<device dev_id="4" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"/>"#
        )
    );
    let dump = parse_str(&xml).unwrap();
    assert_eq!(dump.devices, vec![device(4, Vec::new())]);
}

// ---- errors ----------------------------------------------------------------------------------

#[test]
fn malformed_xml_is_reported_with_its_line() {
    let xml = in_superblock(
        "<device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" \
         snap_time=\"0\">\n</superblock>",
    );
    let result = parse_str(&xml);
    assert!(
        matches!(result, Err(Error::Xml { line: 3, .. })),
        "{result:?}"
    );
}

#[test]
fn errors_name_the_line_on_which_the_element_ends() {
    // A mapping written as an opening tag, spread over lines 3 and 4.
    let xml = in_device("<single_mapping origin_block=\"1\"\n data_block=\"2\" time=\"0\">");
    match parse_str(&xml) {
        Err(Error::MisplacedElement {
            line: 4, element, ..
        }) => {
            assert_eq!(element, "single_mapping")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicated_attribute_is_an_attribute_syntax_error() {
    let xml =
        in_device(r#"<single_mapping origin_block="1" origin_block="2" data_block="2" time="0"/>"#);
    assert!(matches!(
        parse_str(&xml),
        Err(Error::AttributeSyntax { line: 3, ref element, .. }) if element == "single_mapping"
    ));
}

#[test]
fn an_element_longer_than_the_limit_is_refused_before_it_is_buffered() {
    let uuid = "u".repeat(MAX_EVENT_BYTES * 2);
    let xml = format!(
        "<superblock uuid=\"{uuid}\" time=\"1\" transaction=\"2\" version=\"2\" \
         data_block_size=\"128\" nr_data_blocks=\"1000\"></superblock>"
    );
    assert!(matches!(
        parse_str(&xml),
        Err(Error::ElementTooLong {
            line: 1,
            limit: MAX_EVENT_BYTES
        })
    ));
    // Long text between elements counts too.
    let xml = in_superblock(&" ".repeat(MAX_EVENT_BYTES * 2));
    assert!(matches!(parse_str(&xml), Err(Error::ElementTooLong { .. })));
}

#[test]
fn unknown_element_is_named() {
    let xml = in_device("<named_mapping/>");
    assert!(matches!(
        parse_str(&xml),
        Err(Error::UnknownElement { line: 3, ref element }) if element == "named_mapping"
    ));
}

#[test]
fn elements_out_of_place_are_refused() {
    let mapping = r#"<single_mapping origin_block="1" data_block="2" time="0"/>"#;
    let device =
        r#"<device dev_id="2" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"/>"#;
    let nested_superblock = r#"<superblock uuid="" time="1" transaction="2" version="2" data_block_size="128" nr_data_blocks="1"/>"#;
    let cases = [
        (
            in_superblock(mapping),
            "mapping",
            "directly inside <superblock>",
        ),
        (device.to_owned(), "device", "outside <superblock>"),
        (in_device(device), "device", "inside <device>"),
        (
            in_superblock(nested_superblock),
            "superblock",
            "directly inside <superblock>",
        ),
        (in_superblock("") + device, "device", "after </superblock>"),
        (
            in_superblock(r#"<def name="a"><ref name="a"/></def>"#),
            "ref",
            "inside <def>",
        ),
    ];
    for (xml, element, expected) in cases {
        match parse_str(&xml) {
            Err(Error::MisplacedElement {
                place, element: e, ..
            }) => {
                assert_eq!(place, expected, "{xml}");
                assert!(e.contains(element), "{e} in {xml}");
            }
            other => panic!("{xml}: {other:?}"),
        }
    }
}

#[test]
fn doctype_and_processing_instructions_are_refused() {
    let xml = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>\n{}", in_superblock(""));
    assert!(matches!(
        parse_str(&xml),
        Err(Error::MisplacedElement { line: 1, ref element, .. }) if element == "!DOCTYPE"
    ));
    let xml = in_device("<?php echo ?>");
    assert!(matches!(
        parse_str(&xml),
        Err(Error::MisplacedElement { line: 3, .. })
    ));
}

#[test]
fn missing_attribute_is_named_with_element_and_line() {
    let xml = in_superblock(
        r#"<device mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"></device>"#,
    );
    assert!(matches!(
        parse_str(&xml),
        Err(Error::MissingAttribute {
            line: 2,
            element: "device",
            attribute: "dev_id"
        })
    ));
    let xml = in_device(r#"<range_mapping origin_begin="0" data_begin="0" time="0"/>"#);
    assert!(matches!(
        parse_str(&xml),
        Err(Error::MissingAttribute {
            line: 3,
            element: "range_mapping",
            attribute: "length"
        })
    ));
}

#[test]
fn unknown_attribute_is_named() {
    let xml =
        in_device(r#"<single_mapping origin_block="0" data_block="0" time="0" colour="red"/>"#);
    assert!(matches!(
        parse_str(&xml),
        Err(Error::UnknownAttribute { element: "single_mapping", ref attribute, .. }) if attribute == "colour"
    ));
}

#[test]
fn numbers_must_be_plain_decimals_that_fit_their_field() {
    for (value, attribute) in [
        ("12a", "data_block"),
        ("-1", "data_block"),
        ("", "data_block"),
        ("+1", "data_block"),
        (" 1", "data_block"),
        ("18446744073709551616", "data_block"),
        ("4294967296", "time"),
    ] {
        let attrs = if attribute == "time" {
            format!(r#"origin_block="0" data_block="0" time="{value}""#)
        } else {
            format!(r#"origin_block="0" data_block="{value}" time="0""#)
        };
        let xml = in_device(&format!("<single_mapping {attrs}/>"));
        match parse_str(&xml) {
            Err(Error::BadNumber {
                attribute: a,
                value: v,
                line: 3,
                ..
            }) => assert_eq!((a, v.as_str()), (attribute, value)),
            other => panic!("{value}: {other:?}"),
        }
    }
}

#[test]
fn empty_or_overflowing_runs_are_refused() {
    for body in [
        r#"<range_mapping origin_begin="5" data_begin="0" length="0" time="0"/>"#,
        r#"<range_mapping origin_begin="18446744073709551615" data_begin="0" length="2" time="0"/>"#,
        r#"<range_mapping origin_begin="0" data_begin="18446744073709551615" length="2" time="0"/>"#,
    ] {
        let result = parse_str(&in_device(body));
        assert!(
            matches!(result, Err(Error::BadRun { line: 3, .. })),
            "{body}: {result:?}"
        );
    }
}

#[test]
fn overlapping_mappings_in_a_device_are_refused() {
    let xml = in_device(
        r#"<range_mapping origin_begin="10" data_begin="0" length="5" time="0"/>
           <single_mapping origin_block="14" data_block="99" time="0"/>"#,
    );
    assert!(matches!(
        parse_str(&xml),
        Err(Error::OverlappingMappings { ref owner, first: 10, second: 14 }) if owner == "device 1"
    ));
}

#[test]
fn a_device_referring_twice_to_one_def_overlaps_itself() {
    let xml = in_superblock(
        r#"<def name="d"><single_mapping origin_block="1" data_block="1" time="0"/></def>
           <device dev_id="3" mapped_blocks="2" transaction="0" creation_time="0" snap_time="0">
             <ref name="d"/><ref name="d"/>
           </device>"#,
    );
    assert!(matches!(
        parse_str(&xml),
        Err(Error::OverlappingMappings { ref owner, .. }) if owner == "device 3"
    ));
}

#[test]
fn duplicate_device_ids_are_refused() {
    let dev = r#"<device dev_id="7" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"></device>"#;
    let xml = in_superblock(&format!("{dev}\n{dev}"));
    assert!(matches!(
        parse_str(&xml),
        Err(Error::DuplicateDevice { line: 3, dev_id: 7 })
    ));
}

#[test]
fn duplicate_defs_and_unknown_refs_are_refused() {
    let xml = in_superblock(r#"<def name="a"></def><def name="a"></def>"#);
    assert!(matches!(
        parse_str(&xml),
        Err(Error::DuplicateDef { ref name, .. }) if name == "a"
    ));
    let xml = in_device(r#"<ref name="nowhere"/>"#);
    assert!(matches!(
        parse_str(&xml),
        Err(Error::UnknownRef { line: 3, ref name }) if name == "nowhere"
    ));
}

#[test]
fn a_document_that_stops_early_is_incomplete() {
    assert!(matches!(parse_str(""), Err(Error::Incomplete { line: 1 })));
    assert!(matches!(
        parse_str("<!-- nothing -->"),
        Err(Error::Incomplete { .. })
    ));
    let truncated = &DUMP_0_9[..DUMP_0_9.find("</superblock>").unwrap()];
    // quick-xml reports the unclosed start tags at the end of the input.
    assert!(matches!(
        parse_str(truncated),
        Err(Error::Incomplete { .. } | Error::Xml { .. })
    ));
}

#[test]
fn refs_cannot_multiply_a_def_past_the_run_limit() {
    let mut body = String::from(r#"<def name="d">"#);
    for i in 0..10 {
        body += &format!(
            r#"<single_mapping origin_block="{i}" data_block="{}" time="0"/>"#,
            2 * i
        );
    }
    body += "</def>";
    for dev_id in 0..5 {
        body += &format!(
            r#"<device dev_id="{dev_id}" mapped_blocks="10" transaction="0" creation_time="0" snap_time="0"><ref name="d"/></device>"#
        );
    }
    let xml = in_superblock(&body);
    let limits = |runs| Limits {
        event_bytes: MAX_EVENT_BYTES,
        runs,
    };
    assert!(parse_with(xml.as_bytes(), limits(60)).is_ok());
    assert!(matches!(
        parse_with(xml.as_bytes(), limits(59)),
        Err(Error::TooManyMappings { limit: 59, .. })
    ));
}

#[test]
fn writer_refuses_invalid_dumps_and_writes_nothing() {
    let cases = [
        vec![device(1, vec![run(5, 0, 1, 0), run(2, 0, 1, 0)])],
        vec![device(1, vec![run(0, 0, 3, 0), run(2, 9, 1, 0)])],
        vec![device(1, vec![run(0, 0, 0, 0)])],
        vec![device(1, vec![run(u64::MAX, 0, 1, 0)])],
        vec![device(1, Vec::new()), device(1, Vec::new())],
    ];
    for devices in cases {
        let dump = Dump {
            superblock: superblock(),
            devices,
        };
        let mut out = Vec::new();
        let result = write(&dump, &mut out);
        assert!(
            matches!(
                result,
                Err(Error::UnsortedMappings { .. }
                    | Error::OverlappingMappings { .. }
                    | Error::BadRun { .. }
                    | Error::DuplicateDevice { .. })
            ),
            "{result:?}"
        );
        assert!(out.is_empty());
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Sorted, non-overlapping runs: each starts after a gap past the previous one's end.
    fn runs() -> impl Strategy<Value = Vec<MappingRun>> {
        prop::collection::vec((0u64..3, 0u64..1000, 1u64..5, 0u32..3), 0..40).prop_map(|specs| {
            let mut next = 0u64;
            specs
                .into_iter()
                .map(|(gap, data_begin, length, time)| {
                    let r = run(next + gap, data_begin, length, time);
                    next += gap + length;
                    r
                })
                .collect()
        })
    }

    fn dumps() -> impl Strategy<Value = Dump> {
        let sb = (
            "[ -~]{0,12}",
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(uuid, time, transaction, flags, version, dbs, nr, snap)| {
                SuperblockInfo {
                    uuid,
                    time,
                    transaction,
                    flags,
                    version,
                    data_block_size: dbs,
                    nr_data_blocks: nr,
                    metadata_snap: snap,
                }
            });
        let device = (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            runs(),
        );
        let devices = prop::collection::btree_map(any::<u32>(), device, 0..5);
        (sb, devices).prop_map(|(superblock, devices)| Dump {
            superblock,
            devices: devices
                .into_iter()
                .map(
                    |(dev_id, (mapped_blocks, transaction, creation_time, snap_time, mappings))| {
                        DeviceDump {
                            dev_id,
                            mapped_blocks,
                            transaction,
                            creation_time,
                            snap_time,
                            mappings,
                        }
                    },
                )
                .collect(),
        })
    }

    /// The dump with each device's continuing runs merged, as the parser returns it.
    fn canonical(mut dump: Dump) -> Dump {
        for device in &mut dump.devices {
            device.mappings = runs::coalesce(&device.mappings).collect();
        }
        dump
    }

    proptest! {
        #[test]
        fn random_dumps_round_trip_through_write_and_parse(dump in dumps()) {
            let xml = to_xml(&dump);
            let parsed = parse_str(&xml).unwrap();
            prop_assert_eq!(&parsed, &canonical(dump));
            prop_assert_eq!(to_xml(&parsed), xml);
        }
    }
}

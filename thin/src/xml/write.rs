//! The writer: a [`Dump`] as thin_dump 0.9 prints it, which both thin_restore 0.9 and 1.x read.
//!
//! 0.9's layout is the superset of the two: `flags` is always written (1.x leaves it out when
//! it is 0), and the document ends with a newline. Refs are never written (0.9 cannot read them).

use std::collections::HashSet;
use std::fmt::Display;
use std::io::Write;

use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, Event};

use super::runs::{check_order, check_run, coalesce};
use super::{DeviceDump, Dump, Error, MappingRun, SuperblockInfo};

/// Writes `dump` as a thin_dump XML document. Each device's runs must be sorted by thin block
/// and must not overlap; neighbours that continue each other are merged into one
/// `range_mapping`, as thin_dump does. Nothing is written if the dump is invalid.
pub fn write<W: Write>(dump: &Dump, out: W) -> Result<(), Error> {
    check(dump)?;
    let mut w = Writer::new_with_indent(out, b' ', 2);
    w.write_event(Event::Start(superblock(&dump.superblock)))
        .map_err(Error::Write)?;
    for device in &dump.devices {
        write_device(&mut w, device).map_err(Error::Write)?;
    }
    w.write_event(Event::End(BytesEnd::new("superblock")))
        .map_err(Error::Write)?;
    let out = w.get_mut();
    out.write_all(b"\n").map_err(Error::Write)?;
    out.flush().map_err(Error::Write)
}

fn check(dump: &Dump) -> Result<(), Error> {
    let mut ids = HashSet::new();
    for device in &dump.devices {
        if !ids.insert(device.dev_id) {
            return Err(Error::DuplicateDevice {
                line: 0,
                dev_id: device.dev_id,
            });
        }
        for run in &device.mappings {
            check_run(run, 0)?;
        }
        let id = device.dev_id;
        check_order(&device.mappings, &|| format!("device {id}"))?;
    }
    Ok(())
}

fn attribute(e: &mut BytesStart<'_>, name: &str, value: impl Display) {
    e.push_attribute((name, value.to_string().as_str()));
}

fn superblock(sb: &SuperblockInfo) -> BytesStart<'static> {
    let mut e = BytesStart::new("superblock");
    e.push_attribute(("uuid", sb.uuid.as_str()));
    attribute(&mut e, "time", sb.time);
    attribute(&mut e, "transaction", sb.transaction);
    attribute(&mut e, "flags", sb.flags);
    attribute(&mut e, "version", sb.version);
    attribute(&mut e, "data_block_size", sb.data_block_size);
    attribute(&mut e, "nr_data_blocks", sb.nr_data_blocks);
    if let Some(snap) = sb.metadata_snap {
        attribute(&mut e, "metadata_snap", snap);
    }
    e
}

fn write_device<W: Write>(w: &mut Writer<W>, device: &DeviceDump) -> std::io::Result<()> {
    let mut e = BytesStart::new("device");
    attribute(&mut e, "dev_id", device.dev_id);
    attribute(&mut e, "mapped_blocks", device.mapped_blocks);
    attribute(&mut e, "transaction", device.transaction);
    attribute(&mut e, "creation_time", device.creation_time);
    attribute(&mut e, "snap_time", device.snap_time);
    w.write_event(Event::Start(e))?;
    for run in coalesce(&device.mappings) {
        w.write_event(Event::Empty(mapping(&run)))?;
    }
    w.write_event(Event::End(BytesEnd::new("device")))
}

fn mapping(run: &MappingRun) -> BytesStart<'static> {
    if run.length == 1 {
        let mut e = BytesStart::new("single_mapping");
        attribute(&mut e, "origin_block", run.origin_begin);
        attribute(&mut e, "data_block", run.data_begin);
        attribute(&mut e, "time", run.time);
        e
    } else {
        let mut e = BytesStart::new("range_mapping");
        attribute(&mut e, "origin_begin", run.origin_begin);
        attribute(&mut e, "data_begin", run.data_begin);
        attribute(&mut e, "length", run.length);
        attribute(&mut e, "time", run.time);
        e
    }
}

//! The parser: thin_dump XML (0.9 or 1.x, with or without `def`/`ref`) into a [`Dump`].

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::str::FromStr;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::limit::Limited;
use super::runs::{check_run, normalise};
use super::{DeviceDump, Dump, Error, MappingRun, SuperblockInfo};

/// The most bytes one event (an element with its attributes, or the text between two elements)
/// may take; the parser's memory per element is bounded by this.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The most mapping runs a dump may hold in all, counted before merging and after expanding
/// every `ref` (at 32 bytes a run, a model of at most 512 MiB): a few `ref`s to a large `def`
/// must not turn a small document into a huge model.
pub const MAX_RUNS: usize = 1 << 24;

/// Reads a whole thin_dump XML document.
pub fn parse<R: Read>(input: R) -> Result<Dump, Error> {
    parse_with(input, Limits::default())
}

/// The parser's bounds; [`parse`] uses [`MAX_EVENT_BYTES`] and [`MAX_RUNS`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) event_bytes: usize,
    pub(super) runs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_bytes: MAX_EVENT_BYTES,
            runs: MAX_RUNS,
        }
    }
}

pub(super) fn parse_with<R: Read>(input: R, limits: Limits) -> Result<Dump, Error> {
    let limited = Limited::new(BufReader::new(input), limits.event_bytes);
    let mut reader = Reader::from_reader(limited);
    reader.config_mut().trim_text(true);
    let mut parser = Parser {
        max_runs: limits.runs,
        ..Parser::default()
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let event = reader.read_event_into(&mut buf);
        let line = reader.get_ref().line();
        match event {
            Ok(Event::Eof) => return parser.finish(line),
            Ok(event) => parser.handle(event, line)?,
            Err(_) if reader.get_ref().exceeded() => {
                return Err(Error::ElementTooLong {
                    line,
                    limit: limits.event_bytes,
                });
            }
            Err(source) => return Err(Error::Xml { line, source }),
        }
        reader.get_mut().mark();
    }
}

/// The element the parser is inside.
#[derive(Default)]
enum Open {
    #[default]
    Nothing,
    Superblock,
    Device(DeviceDump),
    Def(String, Vec<MappingRun>),
    Closed,
}

#[derive(Default)]
struct Parser {
    superblock: Option<SuperblockInfo>,
    devices: Vec<DeviceDump>,
    dev_ids: HashSet<u32>,
    defs: HashMap<String, Vec<MappingRun>>,
    open: Open,
    /// Runs held so far, and the most allowed.
    runs: usize,
    max_runs: usize,
}

impl Parser {
    fn handle(&mut self, event: Event<'_>, line: u64) -> Result<(), Error> {
        match event {
            Event::Start(e) => self.start(&e, line),
            Event::Empty(e) => self.empty(&e, line),
            Event::End(e) => self.end(&String::from_utf8_lossy(e.name().as_ref()), line),
            // Text, comments and the declaration carry nothing; thin_restore ignores them too.
            Event::Text(_)
            | Event::CData(_)
            | Event::GeneralRef(_)
            | Event::Comment(_)
            | Event::Decl(_) => Ok(()),
            Event::PI(_) => Err(Error::MisplacedElement {
                line,
                element: "?processing-instruction".to_owned(),
                place: "in a thin_dump document",
            }),
            Event::DocType(_) => Err(Error::MisplacedElement {
                line,
                element: "!DOCTYPE".to_owned(),
                place: "in a thin_dump document",
            }),
            // parse_with ends at Eof before handing events here.
            Event::Eof => Ok(()),
        }
    }

    fn start(&mut self, e: &BytesStart<'_>, line: u64) -> Result<(), Error> {
        match (e.name().as_ref(), &self.open) {
            (b"superblock", Open::Nothing) => {
                self.superblock = Some(parse_superblock(e, line)?);
                self.open = Open::Superblock;
            }
            (b"device", Open::Superblock) => {
                let device = parse_device(e, line)?;
                if !self.dev_ids.insert(device.dev_id) {
                    return Err(Error::DuplicateDevice {
                        line,
                        dev_id: device.dev_id,
                    });
                }
                self.open = Open::Device(device);
            }
            (b"def", Open::Superblock) => {
                let name = Attrs::read(e, "def", &["name"], line)?.text("name")?;
                if self.defs.contains_key(&name) {
                    return Err(Error::DuplicateDef { line, name });
                }
                self.open = Open::Def(name, Vec::new());
            }
            (b"superblock" | b"device" | b"def", _) => return Err(self.misplaced(e, line)),
            (b"single_mapping" | b"range_mapping" | b"ref", _) => {
                return Err(Error::MisplacedElement {
                    line,
                    element: element_name(e),
                    place: "as an opening tag (it must be an empty element)",
                });
            }
            _ => return Err(unknown(e, line)),
        }
        Ok(())
    }

    fn empty(&mut self, e: &BytesStart<'_>, line: u64) -> Result<(), Error> {
        match e.name().as_ref() {
            b"single_mapping" => self.push_run(parse_single(e, line)?, line, e),
            b"range_mapping" => self.push_run(parse_range(e, line)?, line, e),
            b"ref" => self.push_ref(e, line),
            name @ (b"superblock" | b"device" | b"def") => {
                self.start(e, line)?;
                self.end(&String::from_utf8_lossy(name), line)
            }
            _ => Err(unknown(e, line)),
        }
    }

    fn end(&mut self, name: &str, line: u64) -> Result<(), Error> {
        match (name, std::mem::take(&mut self.open)) {
            ("superblock", Open::Superblock) => self.open = Open::Closed,
            ("device", Open::Device(mut device)) => {
                let id = device.dev_id;
                normalise(&mut device.mappings, &|| format!("device {id}"))?;
                self.devices.push(device);
                self.open = Open::Superblock;
            }
            ("def", Open::Def(name, mut runs)) => {
                normalise(&mut runs, &|| format!("def \"{name}\""))?;
                self.defs.insert(name, runs);
                self.open = Open::Superblock;
            }
            // The XML reader pairs every end tag with its start tag, and only these three
            // elements are accepted as start tags, so this is not reached.
            (_, open) => {
                self.open = open;
                return Err(Error::MisplacedElement {
                    line,
                    element: format!("/{name}"),
                    place: self.place(),
                });
            }
        }
        Ok(())
    }

    fn push_run(&mut self, run: MappingRun, line: u64, e: &BytesStart<'_>) -> Result<(), Error> {
        count_runs(&mut self.runs, 1, self.max_runs, line)?;
        match &mut self.open {
            Open::Device(device) => device.mappings.push(run),
            Open::Def(_, runs) => runs.push(run),
            _ => return Err(self.misplaced(e, line)),
        }
        Ok(())
    }

    fn push_ref(&mut self, e: &BytesStart<'_>, line: u64) -> Result<(), Error> {
        let name = Attrs::read(e, "ref", &["name"], line)?.text("name")?;
        if !matches!(self.open, Open::Device(_)) {
            return Err(self.misplaced(e, line));
        }
        let Some(runs) = self.defs.get(&name) else {
            return Err(Error::UnknownRef { line, name });
        };
        count_runs(&mut self.runs, runs.len(), self.max_runs, line)?;
        if let Open::Device(device) = &mut self.open {
            device.mappings.extend_from_slice(runs);
        }
        Ok(())
    }

    fn finish(self, line: u64) -> Result<Dump, Error> {
        match (self.open, self.superblock) {
            (Open::Closed, Some(superblock)) => Ok(Dump {
                superblock,
                devices: self.devices,
            }),
            _ => Err(Error::Incomplete { line }),
        }
    }

    fn place(&self) -> &'static str {
        match self.open {
            Open::Nothing => "outside <superblock>",
            Open::Superblock => "directly inside <superblock>",
            Open::Device(_) => "inside <device>",
            Open::Def(..) => "inside <def>",
            Open::Closed => "after </superblock>",
        }
    }

    fn misplaced(&self, e: &BytesStart<'_>, line: u64) -> Error {
        Error::MisplacedElement {
            line,
            element: element_name(e),
            place: self.place(),
        }
    }
}

/// Adds `added` to the dump's run count `total`, failing past `max`.
fn count_runs(total: &mut usize, added: usize, max: usize, line: u64) -> Result<(), Error> {
    *total = total.saturating_add(added);
    if *total > max {
        return Err(Error::TooManyMappings { line, limit: max });
    }
    Ok(())
}

fn element_name(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.name().as_ref()).into_owned()
}

fn unknown(e: &BytesStart<'_>, line: u64) -> Error {
    Error::UnknownElement {
        line,
        element: element_name(e),
    }
}

fn parse_superblock(e: &BytesStart<'_>, line: u64) -> Result<SuperblockInfo, Error> {
    const NAMES: &[&str] = &[
        "uuid",
        "time",
        "transaction",
        "flags",
        "version",
        "data_block_size",
        "nr_data_blocks",
        "metadata_snap",
    ];
    let a = Attrs::read(e, "superblock", NAMES, line)?;
    Ok(SuperblockInfo {
        uuid: a.text("uuid")?,
        time: a.number("time")?,
        transaction: a.number("transaction")?,
        flags: a.optional_number("flags")?.unwrap_or(0),
        version: a.number("version")?,
        data_block_size: a.number("data_block_size")?,
        nr_data_blocks: a.number("nr_data_blocks")?,
        metadata_snap: a.optional_number("metadata_snap")?,
    })
}

fn parse_device(e: &BytesStart<'_>, line: u64) -> Result<DeviceDump, Error> {
    const NAMES: &[&str] = &[
        "dev_id",
        "mapped_blocks",
        "transaction",
        "creation_time",
        "snap_time",
    ];
    let a = Attrs::read(e, "device", NAMES, line)?;
    Ok(DeviceDump {
        dev_id: a.number("dev_id")?,
        mapped_blocks: a.number("mapped_blocks")?,
        transaction: a.number("transaction")?,
        creation_time: a.number("creation_time")?,
        snap_time: a.number("snap_time")?,
        mappings: Vec::new(),
    })
}

fn parse_single(e: &BytesStart<'_>, line: u64) -> Result<MappingRun, Error> {
    const NAMES: &[&str] = &["origin_block", "data_block", "time"];
    let a = Attrs::read(e, "single_mapping", NAMES, line)?;
    let run = MappingRun {
        origin_begin: a.number("origin_block")?,
        data_begin: a.number("data_block")?,
        length: 1,
        time: a.number("time")?,
    };
    check_run(&run, line)?;
    Ok(run)
}

fn parse_range(e: &BytesStart<'_>, line: u64) -> Result<MappingRun, Error> {
    const NAMES: &[&str] = &["origin_begin", "data_begin", "length", "time"];
    let a = Attrs::read(e, "range_mapping", NAMES, line)?;
    let run = MappingRun {
        origin_begin: a.number("origin_begin")?,
        data_begin: a.number("data_begin")?,
        length: a.number("length")?,
        time: a.number("time")?,
    };
    check_run(&run, line)?;
    Ok(run)
}

/// The attributes of one element, each checked against the element's list of names.
struct Attrs {
    element: &'static str,
    line: u64,
    values: Vec<(&'static str, Option<String>)>,
}

impl Attrs {
    fn read(
        e: &BytesStart<'_>,
        element: &'static str,
        names: &[&'static str],
        line: u64,
    ) -> Result<Self, Error> {
        let mut values: Vec<_> = names.iter().map(|&name| (name, None)).collect();
        for attribute in e.attributes() {
            let attribute = attribute.map_err(|source| Error::AttributeSyntax {
                line,
                element: element.to_owned(),
                source,
            })?;
            let key = attribute.key.as_ref();
            let Some(slot) = values.iter_mut().find(|(name, _)| name.as_bytes() == key) else {
                return Err(Error::UnknownAttribute {
                    line,
                    element,
                    attribute: String::from_utf8_lossy(key).into_owned(),
                });
            };
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|source| Error::Xml { line, source })?;
            slot.1 = Some(value.into_owned());
        }
        Ok(Attrs {
            element,
            line,
            values,
        })
    }

    fn get(&self, attribute: &'static str) -> Option<&str> {
        self.values
            .iter()
            .find(|(name, _)| *name == attribute)
            .and_then(|(_, value)| value.as_deref())
    }

    fn text(&self, attribute: &'static str) -> Result<String, Error> {
        self.get(attribute)
            .map(str::to_owned)
            .ok_or(Error::MissingAttribute {
                line: self.line,
                element: self.element,
                attribute,
            })
    }

    fn number<T: FromStr>(&self, attribute: &'static str) -> Result<T, Error> {
        self.optional_number(attribute)?
            .ok_or(Error::MissingAttribute {
                line: self.line,
                element: self.element,
                attribute,
            })
    }

    /// A decimal number without sign or spaces, as thin_dump prints them.
    fn optional_number<T: FromStr>(&self, attribute: &'static str) -> Result<Option<T>, Error> {
        let Some(value) = self.get(attribute) else {
            return Ok(None);
        };
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        match value.parse() {
            Ok(number) if digits => Ok(Some(number)),
            _ => Err(Error::BadNumber {
                line: self.line,
                element: self.element,
                attribute,
                value: value.to_owned(),
            }),
        }
    }
}

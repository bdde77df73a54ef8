//! The text descriptor: a strict, bounded parser and its serialiser.
//!
//! A descriptor is a few lines of `key=value` pairs (`version`, `CID`, `parentCID`,
//! `createType`, `parentFileNameHint`), extent lines (`RW 2048 SPARSE "name.vmdk"`, `RW 2048
//! FLAT "name-flat.vmdk" 0`, `RW 2048 ZERO`) and `ddb.*` entries. It is at most
//! [`MAX_DESCRIPTOR`] bytes with at most [`MAX_EXTENTS`] extents, every quoted name at most
//! [`MAX_NAME`] bytes; anything else is refused with a clear error.

use crate::error::Error;

/// Largest descriptor accepted, in bytes.
pub const MAX_DESCRIPTOR: usize = 64 << 10;
/// Most extents a descriptor may list.
pub const MAX_EXTENTS: usize = 1024;
/// Longest extent or parent file name, in bytes.
pub const MAX_NAME: usize = 4096;
/// `parentCID` of an image without a parent.
pub const NO_PARENT: u32 = 0xffff_ffff;

/// The first line of every descriptor.
pub const SIGNATURE: &str = "# Disk DescriptorFile";

/// The kind of an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Plain data in a file, from a sector offset.
    Flat,
    /// A hosted sparse extent (`KDMV` header, grain directory and tables).
    Sparse,
    /// No file: reads as zeros.
    Zero,
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// False for `RDONLY` extents.
    pub writable: bool,
    /// Size in sectors.
    pub sectors: u64,
    /// Kind.
    pub kind: ExtentKind,
    /// The file name (none for ZERO).
    pub file: Option<String>,
    /// FLAT only: where the data starts in the file, in sectors.
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// This image's content id.
    pub cid: u32,
    /// The parent's content id ([`NO_PARENT`] without one).
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: String,
    /// `parentFileNameHint`, for differencing images.
    pub parent: Option<String>,
    /// Extents in guest order.
    pub extents: Vec<ExtentLine>,
}

/// The subformats this crate opens (by `createType`).
pub const SUPPORTED: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

fn bad(why: String) -> Error {
    Error::InvalidImage(format!("VMDK descriptor: {why}"))
}

impl Descriptor {
    /// Parses descriptor text (`bytes` stops at the first NUL).
    pub fn parse(bytes: &[u8]) -> Result<Descriptor, Error> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if end > MAX_DESCRIPTOR {
            return Err(bad(format!(
                "{end} bytes, more than the {MAX_DESCRIPTOR} accepted"
            )));
        }
        let text =
            std::str::from_utf8(&bytes[..end]).map_err(|_| bad("not UTF-8 text".to_owned()))?;
        let mut d = Descriptor {
            cid: 0,
            parent_cid: NO_PARENT,
            create_type: String::new(),
            parent: None,
            extents: Vec::new(),
        };
        let mut seen_type = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |e: Error| match e {
                Error::InvalidImage(m) => Error::InvalidImage(format!("{m} (line {})", n + 1)),
                e => e,
            };
            if starts_extent(line) {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(bad(format!("more than {MAX_EXTENTS} extents")));
                }
                d.extents.push(parse_extent(line).map_err(at)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(at(bad(format!("unrecognised line {:?}", short(line)))));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "CID" => d.cid = parse_cid(value).map_err(at)?,
                "parentCID" => d.parent_cid = parse_cid(value).map_err(at)?,
                "createType" => {
                    d.create_type = unquote(value).map_err(at)?;
                    seen_type = true;
                }
                "parentFileNameHint" => d.parent = Some(unquote(value).map_err(at)?),
                "version" => check_version(value).map_err(at)?,
                _ => {}
            }
        }
        if !seen_type {
            return Err(bad("no createType".to_owned()));
        }
        if d.extents.is_empty() {
            return Err(bad("no extents".to_owned()));
        }
        Ok(d)
    }

    /// Refuses subformats this crate does not open, by name.
    pub fn check_supported(&self) -> Result<(), Error> {
        if SUPPORTED.contains(&self.create_type.as_str()) {
            return Ok(());
        }
        Err(Error::UnsupportedFeature(format!(
            "VMDK subformat {:?} (supported: {})",
            self.create_type,
            SUPPORTED.join(", ")
        )))
    }

    /// The guest size in bytes (sum of the extents).
    pub fn size(&self) -> Result<u64, Error> {
        let mut sectors = 0u64;
        for e in &self.extents {
            sectors = sectors
                .checked_add(e.sectors)
                .ok_or_else(|| bad("extent sizes overflow".to_owned()))?;
        }
        sectors
            .checked_mul(512)
            .ok_or_else(|| bad("disk size overflows".to_owned()))
    }

    /// The descriptor as text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{SIGNATURE}\nversion=1\nCID={:08x}\nparentCID={:08x}\ncreateType=\"{}\"\n",
            self.cid, self.parent_cid, self.create_type
        );
        if let Some(p) = &self.parent {
            s.push_str(&format!("parentFileNameHint=\"{p}\"\n"));
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            s.push_str(&extent_text(e));
        }
        let cyl = self.size().unwrap_or(0) / 512 / (16 * 63);
        s.push_str("\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n");
        s.push_str(&format!(
            "ddb.geometry.cylinders = \"{}\"\nddb.geometry.heads = \"16\"\n\
             ddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
            cyl.min(16383)
        ));
        s
    }
}

fn extent_text(e: &ExtentLine) -> String {
    let access = if e.writable { "RW" } else { "RDONLY" };
    let name = e.file.as_deref().unwrap_or_default();
    match e.kind {
        ExtentKind::Zero => format!("{access} {} ZERO\n", e.sectors),
        ExtentKind::Sparse => format!("{access} {} SPARSE \"{name}\"\n", e.sectors),
        ExtentKind::Flat => format!("{access} {} FLAT \"{name}\" {}\n", e.sectors, e.offset),
    }
}

fn short(line: &str) -> &str {
    let mut end = line.len().min(60);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn starts_extent(line: &str) -> bool {
    ["RW ", "RDONLY ", "NOACCESS "]
        .iter()
        .any(|p| line.starts_with(p))
}

fn check_version(value: &str) -> Result<(), Error> {
    match value {
        "1" | "2" | "3" => Ok(()),
        v => Err(bad(format!(
            "descriptor version {v:?} (1, 2 or 3 expected)"
        ))),
    }
}

fn parse_cid(value: &str) -> Result<u32, Error> {
    u32::from_str_radix(value, 16)
        .map_err(|_| bad(format!("CID {:?} is not hexadecimal", short(value))))
}

/// The text between double quotes; nothing may follow the closing quote.
fn unquote(value: &str) -> Result<String, Error> {
    let (name, rest) = split_quoted(value)?;
    if !rest.trim().is_empty() {
        return Err(bad(format!("text after a quoted value: {:?}", short(rest))));
    }
    Ok(name)
}

/// A leading quoted string and what follows it.
fn split_quoted(value: &str) -> Result<(String, &str), Error> {
    let inner = value
        .strip_prefix('"')
        .ok_or_else(|| bad(format!("value {:?} is not quoted", short(value))))?;
    let close = inner
        .find('"')
        .ok_or_else(|| bad("unterminated quote".to_owned()))?;
    let name = &inner[..close];
    if name.len() > MAX_NAME {
        return Err(bad(format!(
            "a name of {} bytes (at most {MAX_NAME})",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("a control character inside a name".to_owned()));
    }
    Ok((name.to_owned(), &inner[close + 1..]))
}

fn parse_extent(line: &str) -> Result<ExtentLine, Error> {
    let (access, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim_start();
    let (size, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let sectors: u64 = size
        .parse()
        .map_err(|_| bad(format!("extent size {:?} is not a number", short(size))))?;
    if access == "NOACCESS" {
        return Err(Error::UnsupportedFeature(
            "VMDK NOACCESS extents".to_owned(),
        ));
    }
    let kind = match kind {
        "FLAT" => ExtentKind::Flat,
        "SPARSE" => ExtentKind::Sparse,
        "ZERO" => ExtentKind::Zero,
        other => {
            return Err(Error::UnsupportedFeature(format!(
                "VMDK extent type {:?} (FLAT, SPARSE and ZERO are supported)",
                short(other)
            )));
        }
    };
    let mut e = ExtentLine {
        writable: access == "RW",
        sectors,
        kind,
        file: None,
        offset: 0,
    };
    let rest = rest.trim();
    if kind == ExtentKind::Zero {
        if !rest.is_empty() {
            return Err(bad("a ZERO extent names a file".to_owned()));
        }
        return Ok(e);
    }
    let (name, tail) = split_quoted(rest)?;
    if name.is_empty() {
        return Err(bad("an extent with an empty file name".to_owned()));
    }
    e.file = Some(name);
    let tail = tail.trim();
    match (kind, tail) {
        (_, "") => {}
        (ExtentKind::Flat, t) => {
            e.offset = t
                .parse()
                .map_err(|_| bad(format!("extent offset {:?} is not a number", short(t))))?;
        }
        (_, t) => return Err(bad(format!("text after a SPARSE extent: {:?}", short(t)))),
    }
    Ok(e)
}

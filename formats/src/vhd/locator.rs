//! Finding the parent of a differencing disk: its parent locators, resolved and confined as
//! qcow2 backing files are.
//!
//! Platform codes read (as XenServer's `vhd-util` and Windows write them): `MacX` (a UTF-8
//! file URL, `file://./parent.vhd` or `file:///abs/parent.vhd`), `W2ru` (a relative path,
//! UTF-16LE) and `W2ku` (an absolute path, UTF-16LE). Backslashes are path separators;
//! names with a drive letter (`C:\...`) cannot be files here and are skipped. The parent's
//! unicode name in the header is the last candidate, relative to the child's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::confine::{Confinement, Named};
use crate::error::Error;
use crate::image::{Format, OpenOptions};
use crate::qcow2::Chain;

use super::dynamic::{DynHeader, Locator, utf16};
use super::metaio::VhdIo;

/// Most bytes of locator data read.
const MAX_LOCATOR_LEN: u32 = 64 << 10;

/// The parent names a differencing disk's header gives, best first.
pub fn candidates(io: &VhdIo, header: &DynHeader) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for code in [b"MacX", b"W2ru", b"W2ku"] {
        for l in header.locators.iter().filter(|l| &l.code == code) {
            if let Some(name) = decode(io, l)? {
                names.push(name);
            }
        }
    }
    if !header.parent_name.is_empty() {
        names.push(header.parent_name.replace('\\', "/"));
    }
    names.retain(|n| !n.is_empty() && !has_drive_letter(n));
    names.dedup();
    Ok(names)
}

fn has_drive_letter(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// The name one locator holds.
fn decode(io: &VhdIo, l: &Locator) -> Result<Option<String>, Error> {
    if l.len == 0 || l.len > MAX_LOCATOR_LEN {
        return Err(Error::InvalidImage(format!(
            "VHD parent locator {} has {} bytes of data (1 to {MAX_LOCATOR_LEN} allowed)",
            String::from_utf8_lossy(&l.code),
            l.len
        )));
    }
    let mut data = vec![0u8; l.len as usize];
    io.read_exact(l.offset, &mut data, "parent locator data")?;
    let name = match &l.code {
        b"MacX" => {
            let text = String::from_utf8_lossy(&data);
            let text = text.trim_end_matches('\0');
            text.strip_prefix("file://").map(percent_decode)
        }
        _ => Some(utf16(&data, u16::from_le_bytes).replace('\\', "/")),
    };
    Ok(name)
}

/// `%XX` escapes of a file URL decoded (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the parent of the differencing disk at `path`: the first candidate that exists,
/// confined by `opts.backing`, must be a VHD whose unique id is `header.parent_id`.
pub fn open_parent(
    path: &Path,
    io: &VhdIo,
    header: &DynHeader,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<Arc<super::VhdImage>, Error> {
    let names = candidates(io, header)?;
    let confinement = Confinement::new(&opts.backing, chain.top().unwrap_or(path))?;
    let mut tried = Vec::new();
    for name in &names {
        let name = PathBuf::from(name);
        let named = Named {
            image: path,
            name: &name,
        };
        let located = match confinement.locate(&named) {
            Ok(p) => p,
            Err(Error::Open { path, .. }) => {
                tried.push(path.display().to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        return open_located(&named, &located, &confinement, header, opts, chain);
    }
    Err(Error::BackingChain(format!(
        "parent of {} not found (tried: {})",
        path.display(),
        if tried.is_empty() {
            "no locator".to_owned()
        } else {
            tried.join(", ")
        }
    )))
}

fn open_located(
    named: &Named<'_>,
    located: &Path,
    confinement: &Confinement,
    header: &DynHeader,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<Arc<super::VhdImage>, Error> {
    chain.enter(located)?;
    let parent_opts = OpenOptions {
        read_only: true,
        require_whole_sectors: false,
        ..opts.clone()
    };
    let file = crate::open_file(located, &parent_opts)?;
    confinement.check_opened(named, &file)?;
    confinement.format(named, Some(Format::Vpc), || Ok(Format::Vpc))?;
    let id = super::read_footer(&file)?.unique_id;
    if id != header.parent_id {
        return Err(Error::BackingChain(format!(
            "{} is not the parent {} names: its unique id differs from the one recorded \
             (the parent was changed or replaced)",
            located.display(),
            named.image.display()
        )));
    }
    Ok(Arc::new(super::open_vhd(file, &parent_opts, chain)?))
}

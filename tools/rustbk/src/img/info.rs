//! `rustbk img info`.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rustbk_formats::engine::lock::{LockMode, lock};
use rustbk_formats::qcow2::header::{self, Compression, Header, incompat};
use rustbk_formats::vmdk::descriptor::Descriptor;
use serde_json::{Value, json};

use super::{FormatArg, OutputArg};

/// `rustbk img info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
    /// Describe every image of the backing chain.
    #[arg(long)]
    pub backing_chain: bool,
    /// Read the image even if another process writes it (what is read may be inconsistent),
    /// as qemu-img's `-U`.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// What `info` shows about one image.
#[derive(Debug)]
pub struct ImageInfo {
    /// The path as given.
    pub filename: PathBuf,
    /// qcow2 header, `None` for raw images.
    pub header: Option<Header>,
    /// Footer and header of a VHD, `None` for other formats.
    pub vpc: Option<rustbk_formats::vhd::VhdInfo>,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    pub actual_size: u64,
    /// The descriptor of a VMDK image.
    pub vmdk: Option<Descriptor>,
}

impl ImageInfo {
    /// Reads the information of the image at `path` (its backing file is not opened), locked
    /// against writers as qemu-img locks it unless `force_share`.
    pub fn read(
        path: &Path,
        format: Option<FormatArg>,
        force_share: bool,
    ) -> anyhow::Result<ImageInfo> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("Could not open '{}'", path.display()))?;
        let mode = match force_share {
            true => LockMode::SharedReader,
            false => LockMode::Reader,
        };
        let held = lock(file, path, mode)
            .with_context(|| format!("Could not open '{}'", path.display()))?;
        let file = held.file();
        let meta = file.metadata()?;
        let mut head = [0u8; 8];
        let got = file.read_at(&mut head, 0)?;
        let is_qcow2 = head[..got].starts_with(&header::MAGIC);
        let is_vpc = head[..got].starts_with(b"conectix");
        if format == Some(FormatArg::Vpc) || (format.is_none() && is_vpc) {
            let vpc = rustbk_formats::vhd::describe(path, true)
                .with_context(|| format!("Could not open '{}'", path.display()))?;
            return Ok(ImageInfo {
                filename: path.to_owned(),
                header: None,
                virtual_size: vpc.virtual_size,
                vpc: Some(vpc),
                actual_size: meta.blocks() * 512,
                vmdk: None,
            });
        }
        let is_vmdk = rustbk_formats::probe_format(path).ok() == Some(rustbk_formats::Format::Vmdk);
        if format == Some(FormatArg::Vmdk) || (format.is_none() && is_vmdk) {
            let d = rustbk_formats::vmdk::create::describe(path)
                .with_context(|| format!("Could not open '{}'", path.display()))?;
            return Ok(ImageInfo {
                filename: path.to_owned(),
                header: None,
                virtual_size: d.size()?,
                vpc: None,
                actual_size: meta.blocks() * 512,
                vmdk: Some(d),
            });
        }
        let header = match format {
            Some(FormatArg::Raw | FormatArg::Vpc) => None,
            Some(FormatArg::Qcow2) | None if is_qcow2 => Some(read_header(file, meta.len())?),
            Some(FormatArg::Qcow2) => bail!("'{}' is not a qcow2 image", path.display()),
            Some(FormatArg::Vmdk) | None => None,
        };
        let virtual_size = header.as_ref().map_or(meta.len(), |h| h.size);
        Ok(ImageInfo {
            filename: path.to_owned(),
            header,
            vpc: None,
            virtual_size,
            actual_size: meta.blocks() * 512,
            vmdk: None,
        })
    }

    /// The backing file as stored and as resolved, and its format.
    pub fn backing(&self) -> Option<(PathBuf, PathBuf, Option<String>)> {
        let (name, format) = match (&self.header, &self.vpc, &self.vmdk) {
            (Some(h), _, _) => (h.backing_file.clone()?, h.backing_format.clone()),
            (None, Some(v), _) => (PathBuf::from(v.parent.clone()?), Some("vpc".to_owned())),
            (None, None, Some(d)) => (PathBuf::from(d.parent.clone()?), Some("vmdk".to_owned())),
            (None, None, None) => return None,
        };
        let full = match (name.is_absolute(), self.filename.parent()) {
            (false, Some(dir)) => dir.join(&name),
            _ => name.clone(),
        };
        Some((name, full, format))
    }

    /// qemu-img's name of the image's format.
    pub fn format_name(&self) -> &'static str {
        match (&self.header, &self.vpc, &self.vmdk) {
            (Some(_), _, _) => "qcow2",
            (None, Some(_), _) => "vpc",
            (None, None, Some(_)) => "vmdk",
            (None, None, None) => "raw",
        }
    }

    /// The JSON object `qemu-img info --output=json` prints.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "filename": self.filename.display().to_string(),
            "format": self.format_name(),
            "virtual-size": self.virtual_size,
            "actual-size": self.actual_size,
            "dirty-flag": self.header.as_ref().is_some_and(|h| h.incompatible & incompat::DIRTY != 0),
        });
        if let Some(bs) = self.vpc.as_ref().and_then(|v| v.block_size) {
            v["cluster-size"] = json!(bs);
        }
        if let Some(h) = &self.header {
            v["cluster-size"] = json!(h.cluster_size());
            v["format-specific"] = json!({ "type": "qcow2", "data": specific(h) });
        }
        if let Some((name, full, format)) = self.backing() {
            v["backing-filename"] = json!(name.display().to_string());
            v["full-backing-filename"] = json!(full.display().to_string());
            if let Some(f) = format {
                v["backing-filename-format"] = json!(f);
            }
        }
        v
    }

    /// The text `qemu-img info` prints.
    pub fn to_human(&self) -> String {
        let mut s = format!(
            "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
            self.filename.display(),
            self.format_name(),
            human_size(self.virtual_size),
            self.virtual_size,
            human_size(self.actual_size)
        );
        if let Some(v) = &self.vpc {
            return s + &vpc_human(v, self.backing());
        }
        if let Some(d) = &self.vmdk {
            return s + &vmdk_human(d, self.backing());
        }
        let Some(h) = &self.header else {
            return s;
        };
        s += &format!("cluster_size: {}\n", h.cluster_size());
        if let Some((name, full, format)) = self.backing() {
            s += &format!("backing file: {}", name.display());
            if full != name {
                s += &format!(" (actual path: {})", full.display());
            }
            s += "\n";
            if let Some(f) = format {
                s += &format!("backing file format: {f}\n");
            }
        }
        s += "Format specific information:\n";
        if let Value::Object(map) = specific(h) {
            for (k, v) in map {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                s += &format!("    {}: {v}\n", k.replace('-', " "));
            }
        }
        s
    }
}

/// The VHD lines of `info`: block size, disk type and parent.
fn vpc_human(
    v: &rustbk_formats::vhd::VhdInfo,
    parent: Option<(PathBuf, PathBuf, Option<String>)>,
) -> String {
    let mut s = String::new();
    if let Some(bs) = v.block_size {
        s += &format!("cluster_size: {bs}\n");
    }
    if let Some((name, full, _)) = parent {
        s += &format!(
            "backing file: {} (actual path: {})\nbacking file format: vpc\n",
            name.display(),
            full.display()
        );
    }
    s += &format!(
        "Format specific information:\n    disk type: {:?}\n",
        v.disk_type
    );
    s
}

/// The VMDK lines of `info`'s text.
fn vmdk_human(d: &Descriptor, backing: Option<(PathBuf, PathBuf, Option<String>)>) -> String {
    let mut s = String::new();
    if let Some((name, full, _)) = backing {
        s += &format!(
            "backing file: {} (actual path: {})\n",
            name.display(),
            full.display()
        );
    }
    s += &format!(
        "Format specific information:\n    cid: {}\n    parent cid: {}\n    create type: {}\n",
        d.cid, d.parent_cid, d.create_type
    );
    s
}

fn read_header(file: &std::fs::File, file_size: u64) -> anyhow::Result<Header> {
    let mut head = [0u8; 128];
    let got = file.read_at(&mut head, 0)?;
    let bits = header::peek_cluster_bits(&head[..got])?;
    let len = usize::try_from(file_size.min(1 << bits)).unwrap_or(1 << bits);
    let mut first = vec![0u8; len];
    let got = file.read_at(&mut first, 0)?;
    first.truncate(got);
    Ok(Header::parse(&first, file_size)?)
}

/// The `format-specific` data of a qcow2 header.
fn specific(h: &Header) -> Value {
    let compression = match h.compression {
        Compression::Deflate => "zlib",
        Compression::Zstd => "zstd",
    };
    let mut v = json!({
        "compat": if h.version >= 3 { "1.1" } else { "0.10" },
        "compression-type": compression,
        "refcount-bits": 1u32 << h.refcount_order,
    });
    if h.version >= 3 {
        v["lazy-refcounts"] = json!(h.compatible & 1 != 0);
        v["corrupt"] = json!(h.incompatible & incompat::CORRUPT != 0);
        v["extended-l2"] = json!(h.incompatible & incompat::EXTENDED_L2 != 0);
    }
    v
}

/// A size the way qemu-img prints it: `4 MiB`, `1.5 GiB`, `328 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text,
    };
    format!("{text} {}", UNITS[unit])
}

/// The information of the image at `path` and of every backing file below it, top first.
pub fn read_chain(
    path: &Path,
    format: Option<FormatArg>,
    force_share: bool,
) -> anyhow::Result<Vec<ImageInfo>> {
    let mut chain = vec![ImageInfo::read(path, format, force_share)?];
    while let Some(last) = chain.last() {
        let Some((name, full, format)) = last.backing() else {
            break;
        };
        if let Some(protocol) = rustbk_formats::protocol_of(&name) {
            bail!(
                "Backing file {name:?} of {} refused: `{protocol}:` is a protocol name; only \
                 files are opened",
                last.filename.display()
            );
        }
        if chain.len() > rustbk_formats::qcow2::MAX_CHAIN_DEPTH {
            bail!(
                "Backing chain deeper than {}",
                rustbk_formats::qcow2::MAX_CHAIN_DEPTH
            );
        }
        let format = match format.as_deref() {
            Some("raw") => Some(FormatArg::Raw),
            Some("qcow2") => Some(FormatArg::Qcow2),
            Some("vpc") => Some(FormatArg::Vpc),
            Some("vmdk") => Some(FormatArg::Vmdk),
            _ => None,
        };
        chain.push(ImageInfo::read(&full, format, force_share)?);
    }
    Ok(chain)
}

/// Shows the information.
pub fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let chain = match args.backing_chain {
        true => read_chain(&args.file, args.format, args.force_share)?,
        false => vec![ImageInfo::read(&args.file, args.format, args.force_share)?],
    };
    match (args.output, args.backing_chain) {
        (OutputArg::Json, true) => {
            let all: Vec<Value> = chain.iter().map(ImageInfo::to_json).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        (OutputArg::Json, false) => {
            println!("{}", serde_json::to_string_pretty(&chain[0].to_json())?);
        }
        (OutputArg::Human, _) => {
            let texts: Vec<String> = chain.iter().map(ImageInfo::to_human).collect();
            print!("{}", texts.join("\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

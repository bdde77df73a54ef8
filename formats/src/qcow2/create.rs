//! Creating qcow2 images and growing them.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

use super::layout::small;
use crate::BackingPolicy;
use crate::confine::{Confinement, Named};
use crate::image::{Format, OpenOptions};

use super::header::{self, MAX_L1_BYTES, MAX_REFTABLE_BYTES, NewHeader};
use super::refcount::set_entry;

/// The on-disk version, named like `qemu-img create -o compat=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compat {
    /// Version 2 (`compat=0.10`).
    V0_10,
    /// Version 3 (`compat=1.1`).
    #[default]
    V1_1,
}

/// How to create an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Cluster size in bytes: a power of two from 512 to 2 MiB.
    pub cluster_size: u32,
    /// On-disk version.
    pub compat: Compat,
    /// Refcount width in bits: a power of two from 1 to 64 (16 for version 2).
    pub refcount_bits: u32,
    /// Backing file name as stored (relative names are relative to the image's folder).
    pub backing_file: Option<PathBuf>,
    /// Backing file format, stored as a header extension (`None`: probed at open).
    pub backing_format: Option<Format>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            cluster_size: 65536,
            compat: Compat::V1_1,
            refcount_bits: 16,
            backing_file: None,
            backing_format: None,
        }
    }
}

fn arg(what: String) -> Error {
    Error::InvalidArgument(what)
}

struct Plan {
    l1_size: u64,
    reftable_clusters: u64,
    l1_clusters: u64,
    refblocks: u64,
}

impl Plan {
    fn total(&self) -> u64 {
        1 + self.reftable_clusters + self.l1_clusters + self.refblocks
    }
}

fn plan(size: u64, bits: u32, refcount_order: u32) -> Result<Plan, Error> {
    let cs = 1u64 << bits;
    let l1_size = size.div_ceil(cs * (cs / 8)).max(1);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(arg(format!(
            "size {size} needs an L1 table over {MAX_L1_BYTES} bytes"
        )));
    }
    let per_block = (cs * 8) >> refcount_order;
    let mut p = Plan {
        l1_size,
        reftable_clusters: 1,
        l1_clusters: (l1_size * 8).div_ceil(cs),
        refblocks: 1,
    };
    loop {
        let refblocks = p.total().div_ceil(per_block);
        let reftable_clusters = (refblocks * 8).div_ceil(cs);
        if (refblocks, reftable_clusters) == (p.refblocks, p.reftable_clusters) {
            break;
        }
        p.refblocks = refblocks;
        p.reftable_clusters = reftable_clusters;
    }
    if p.reftable_clusters * cs > MAX_REFTABLE_BYTES {
        return Err(arg("refcount table too large".to_owned()));
    }
    Ok(p)
}

fn check_options(size: u64, opts: &CreateOptions) -> Result<(u32, u32), Error> {
    let cs = opts.cluster_size;
    let bits = cs.trailing_zeros();
    if !cs.is_power_of_two() || !header::CLUSTER_BITS.contains(&bits) {
        return Err(arg(format!(
            "cluster size {cs} is not a power of two from 512 to 2M"
        )));
    }
    let rb = opts.refcount_bits;
    if !rb.is_power_of_two() || rb > 64 {
        return Err(arg(format!(
            "refcount_bits {rb} is not a power of two from 1 to 64"
        )));
    }
    if opts.compat == Compat::V0_10 && rb != 16 {
        return Err(arg("compat 0.10 images have 16-bit refcounts".to_owned()));
    }
    if size % 512 != 0 || size > header::MAX_SIZE {
        return Err(arg(format!(
            "size {size} is not a multiple of 512 up to 2^61"
        )));
    }
    Ok((bits, rb.trailing_zeros()))
}

/// The backing image's size (for `size == 0`), opened relative to the new image's folder as
/// the image tool opens backing files ([`BackingPolicy::Follow`]).
fn backing_size(path: &Path, opts: &CreateOptions) -> Result<u64, Error> {
    let Some(name) = &opts.backing_file else {
        return Err(arg("size 0 without a backing file".to_owned()));
    };
    let backing_opts = OpenOptions {
        read_only: true,
        cache: crate::CacheMode::Writeback,
        backing: BackingPolicy::Follow,
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    let follow = Confinement::new(&BackingPolicy::Follow, path)?;
    let named = Named { image: path, name };
    let located = follow.locate(&named)?;
    let format = follow.format(&named, opts.backing_format, || {
        crate::probe_format(&located)
    })?;
    let image = crate::open_image(&located, format, &backing_opts)?;
    Ok(image.geometry().size.div_ceil(512) * 512)
}

/// Creates a qcow2 image of `size` bytes at `path` (which must not exist). With a backing file
/// and `size == 0`, the image takes the backing image's size.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<(), Error> {
    let size = match size {
        0 if opts.backing_file.is_some() => backing_size(path, opts)?,
        s => s,
    };
    let (bits, order) = check_options(size, opts)?;
    let p = plan(size, bits, order)?;
    let cs = 1u64 << bits;
    let rt_offset = cs;
    let l1_offset = rt_offset + p.reftable_clusters * cs;
    let rb_offset = l1_offset + p.l1_clusters * cs;
    let format_name = opts.backing_format.map(|f| match f {
        Format::Qcow2 => "qcow2",
        _ => "raw",
    });
    let name = opts.backing_file.as_ref().map(|b| b.as_os_str().as_bytes());
    let head = header::serialize(&NewHeader {
        version: if opts.compat == Compat::V0_10 { 2 } else { 3 },
        cluster_bits: bits,
        size,
        l1: (u32::try_from(p.l1_size).unwrap_or(0), l1_offset),
        reftable: (rt_offset, u32::try_from(p.reftable_clusters).unwrap_or(0)),
        refcount_order: order,
        backing: name.map(|n| (n, format_name)),
    })?;
    let mut reftable = vec![0u8; small(p.reftable_clusters * cs)];
    for i in 0..p.refblocks {
        super::meta::put64(&mut reftable, small(i * 8), rb_offset + i * cs);
    }
    let mut blocks = vec![0u8; small(p.refblocks * cs)];
    for c in 0..p.total() {
        set_entry(&mut blocks, order, c, 1);
    }
    let err = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let mut file = crate::engine::create_new(path)?;
    file.write_all(&head).map_err(err)?;
    file.write_all_at(&reftable, rt_offset).map_err(err)?;
    file.write_all_at(&blocks, rb_offset).map_err(err)?;
    file.set_len(p.total() * cs).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}

/// Grows the image at `path` to `new_size` bytes (shrinking is refused). A larger L1 table is
/// written at the end of the file and switched to in a crash-safe order.
pub fn resize(path: &Path, new_size: u64) -> Result<(), Error> {
    let opts = OpenOptions {
        cache: crate::CacheMode::Writeback,
        backing: BackingPolicy::Follow,
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    let file = std::sync::Arc::new(crate::EngineFile::open(
        path,
        crate::engine::Access::ReadWrite,
        crate::CacheMode::Writeback,
    )?);
    let image = super::Qcow2Image::open(file, &opts, &mut super::Chain::default())?;
    let old = image.size.get();
    if new_size < old || new_size % 512 != 0 || new_size > header::MAX_SIZE {
        return Err(arg(format!(
            "cannot resize from {old} to {new_size} bytes (grow only, multiple of 512)"
        )));
    }
    super::grow::grow_metadata(&image, new_size)
}

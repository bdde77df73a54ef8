//! `rustbk img` against the real qemu-img: images made by one are checked by the other, and
//! both tools must agree on checks, maps, comparisons and converted contents. qemu-img and
//! qemu-io (Debian package qemu-utils) are required: without them these tests fail.

// Test patterns deliberately truncate numbers into bytes.
#![allow(clippy::cast_possible_truncation)]

mod backing;
mod bench;
mod check;
mod commit;
mod commit_windows;
mod common;
mod convert;
mod create;
mod damage;
mod holder;
mod locks;
mod rebase;
mod tools;
mod vmdk;
mod vpc;
mod vpc_tools;

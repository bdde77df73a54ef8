//! Checks the Rust blkif layout against Xen's own C headers (libxen-dev):
//! a C program prints every size, offset, constant and ring size, compiled
//! natively (x86_64) and with `-m32` (x86_32, needs gcc-multilib), and every
//! number must equal the Rust value for the matching `Abi`.
//! A missing gcc, header or multilib FAILS this test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rustbk_ring::abi::{
    DISCARD_SECURE, SEG_FIRST_SECT, SEG_GREF, SEG_LAST_SECT, SEGMENT_SIZE, SRING_REQ_EVENT,
    SRING_REQ_PROD, SRING_RING, SRING_RSP_EVENT, SRING_RSP_PROD,
};
use rustbk_ring::{
    Abi, MAX_INDIRECT_PAGES, MAX_RING_PAGE_ORDER, MAX_SEGMENTS_PER_REQUEST,
    SEGS_PER_INDIRECT_FRAME, op, ring_entries, status,
};

const PROGRAM: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

#define S(name, v) printf("%s %lld\n", name, (long long)(v))
#define OFF(name, type, field) S(name, offsetof(type, field))

int main(void)
{
    S("req.size", sizeof(struct blkif_request));
    OFF("req.operation", struct blkif_request, operation);
    OFF("req.nr_segments", struct blkif_request, nr_segments);
    OFF("req.handle", struct blkif_request, handle);
    OFF("req.id", struct blkif_request, id);
    OFF("req.sector_number", struct blkif_request, sector_number);
    OFF("req.seg", struct blkif_request, seg);

    S("seg.size", sizeof(struct blkif_request_segment));
    OFF("seg.gref", struct blkif_request_segment, gref);
    OFF("seg.first_sect", struct blkif_request_segment, first_sect);
    OFF("seg.last_sect", struct blkif_request_segment, last_sect);

    S("discard.size", sizeof(struct blkif_request_discard));
    OFF("discard.operation", struct blkif_request_discard, operation);
    OFF("discard.flag", struct blkif_request_discard, flag);
    OFF("discard.handle", struct blkif_request_discard, handle);
    OFF("discard.id", struct blkif_request_discard, id);
    OFF("discard.sector_number", struct blkif_request_discard, sector_number);
    OFF("discard.nr_sectors", struct blkif_request_discard, nr_sectors);

    S("indirect.size", sizeof(struct blkif_request_indirect));
    OFF("indirect.operation", struct blkif_request_indirect, operation);
    OFF("indirect.indirect_op", struct blkif_request_indirect, indirect_op);
    OFF("indirect.nr_segments", struct blkif_request_indirect, nr_segments);
    OFF("indirect.id", struct blkif_request_indirect, id);
    OFF("indirect.sector_number", struct blkif_request_indirect, sector_number);
    OFF("indirect.handle", struct blkif_request_indirect, handle);
    OFF("indirect.indirect_grefs", struct blkif_request_indirect, indirect_grefs);

    S("rsp.size", sizeof(struct blkif_response));
    OFF("rsp.id", struct blkif_response, id);
    OFF("rsp.operation", struct blkif_response, operation);
    OFF("rsp.status", struct blkif_response, status);

    S("sring.entry_size", sizeof(union blkif_sring_entry));
    S("sring.size", sizeof(struct blkif_sring));
    OFF("sring.req_prod", struct blkif_sring, req_prod);
    OFF("sring.req_event", struct blkif_sring, req_event);
    OFF("sring.rsp_prod", struct blkif_sring, rsp_prod);
    OFF("sring.rsp_event", struct blkif_sring, rsp_event);
    OFF("sring.ring", struct blkif_sring, ring);
    for (int order = 0; order <= 4; order++) {
        char name[32];
        snprintf(name, sizeof(name), "ring.order%d", order);
        S(name, __CONST_RING_SIZE(blkif, 4096UL << order));
    }

    S("op.read", BLKIF_OP_READ);
    S("op.write", BLKIF_OP_WRITE);
    S("op.write_barrier", BLKIF_OP_WRITE_BARRIER);
    S("op.flush_diskcache", BLKIF_OP_FLUSH_DISKCACHE);
    S("op.reserved_1", BLKIF_OP_RESERVED_1);
    S("op.discard", BLKIF_OP_DISCARD);
    S("op.indirect", BLKIF_OP_INDIRECT);
    S("rsp.okay", BLKIF_RSP_OKAY);
    S("rsp.error", BLKIF_RSP_ERROR);
    S("rsp.eopnotsupp", BLKIF_RSP_EOPNOTSUPP);
    S("max.segments", BLKIF_MAX_SEGMENTS_PER_REQUEST);
    S("max.indirect_pages", BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    S("max.segs_per_indirect_frame", 4096 / sizeof(struct blkif_request_segment));
    S("discard.secure", BLKIF_DISCARD_SECURE);
    printf("protocol.native %s\n", XEN_IO_PROTO_ABI_NATIVE);
    return 0;
}
"#;

fn n(v: impl TryInto<i64>) -> String {
    v.try_into().unwrap_or(i64::MIN).to_string()
}

/// The numbers the C program must print for `abi`, from the Rust crate.
fn expected(abi: Abi) -> BTreeMap<String, String> {
    let l = abi.layout();
    let mut m: Vec<(String, String)> = vec![
        ("req.size".into(), n(l.request_size)),
        ("req.operation".into(), n(l.req_operation)),
        ("req.nr_segments".into(), n(l.rw_nr_segments)),
        ("req.handle".into(), n(l.rw_handle)),
        ("req.id".into(), n(l.req_id)),
        ("req.sector_number".into(), n(l.rw_sector)),
        ("req.seg".into(), n(l.rw_seg)),
        ("seg.size".into(), n(SEGMENT_SIZE)),
        ("seg.gref".into(), n(SEG_GREF)),
        ("seg.first_sect".into(), n(SEG_FIRST_SECT)),
        ("seg.last_sect".into(), n(SEG_LAST_SECT)),
        ("discard.size".into(), n(l.discard_size)),
        ("discard.operation".into(), n(l.req_operation)),
        ("discard.flag".into(), n(l.discard_flag)),
        ("discard.handle".into(), n(l.discard_handle)),
        ("discard.id".into(), n(l.req_id)),
        ("discard.sector_number".into(), n(l.discard_sector)),
        ("discard.nr_sectors".into(), n(l.discard_nr_sectors)),
        ("indirect.size".into(), n(l.indirect_size)),
        ("indirect.operation".into(), n(l.req_operation)),
        ("indirect.indirect_op".into(), n(l.ind_op)),
        ("indirect.nr_segments".into(), n(l.ind_nr_segments)),
        ("indirect.id".into(), n(l.req_id)),
        ("indirect.sector_number".into(), n(l.ind_sector)),
        ("indirect.handle".into(), n(l.ind_handle)),
        ("indirect.indirect_grefs".into(), n(l.ind_grefs)),
        ("rsp.size".into(), n(l.response_size)),
        ("rsp.id".into(), n(l.rsp_id)),
        ("rsp.operation".into(), n(l.rsp_operation)),
        ("rsp.status".into(), n(l.rsp_status)),
        ("sring.entry_size".into(), n(abi.entry_size())),
        ("sring.size".into(), n(SRING_RING + abi.entry_size())),
        ("sring.req_prod".into(), n(SRING_REQ_PROD)),
        ("sring.req_event".into(), n(SRING_REQ_EVENT)),
        ("sring.rsp_prod".into(), n(SRING_RSP_PROD)),
        ("sring.rsp_event".into(), n(SRING_RSP_EVENT)),
        ("sring.ring".into(), n(SRING_RING)),
        ("op.read".into(), n(op::READ)),
        ("op.write".into(), n(op::WRITE)),
        ("op.write_barrier".into(), n(op::WRITE_BARRIER)),
        ("op.flush_diskcache".into(), n(op::FLUSH_DISKCACHE)),
        ("op.reserved_1".into(), n(op::RESERVED_1)),
        ("op.discard".into(), n(op::DISCARD)),
        ("op.indirect".into(), n(op::INDIRECT)),
        ("rsp.okay".into(), n(status::OKAY)),
        ("rsp.error".into(), n(status::ERROR)),
        ("rsp.eopnotsupp".into(), n(status::EOPNOTSUPP)),
        ("max.segments".into(), n(MAX_SEGMENTS_PER_REQUEST)),
        ("max.indirect_pages".into(), n(MAX_INDIRECT_PAGES)),
        (
            "max.segs_per_indirect_frame".into(),
            n(SEGS_PER_INDIRECT_FRAME),
        ),
        ("discard.secure".into(), n(DISCARD_SECURE)),
        ("protocol.native".into(), abi.protocol_name().into()),
    ];
    for order in 0..=MAX_RING_PAGE_ORDER {
        m.push((format!("ring.order{order}"), n(ring_entries(abi, order))));
    }
    m.into_iter().collect()
}

/// Compiles and runs the C program with `flags`, returning its `name value` lines.
fn run_c(dir: &Path, tag: &str, flags: &[&str]) -> BTreeMap<String, String> {
    assert!(
        Path::new("/usr/include/xen/io/blkif.h").exists(),
        "/usr/include/xen/io/blkif.h is missing: install libxen-dev"
    );
    let src = dir.join("blkif_layout.c");
    std::fs::write(&src, PROGRAM).expect("write C source");
    let bin = dir.join(format!("blkif_layout_{tag}"));
    let out = Command::new("gcc")
        .args(flags)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run gcc ({e}): install gcc (and gcc-multilib for -m32)")
        });
    assert!(
        out.status.success(),
        "gcc {flags:?} failed (need libxen-dev, and gcc-multilib for -m32):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().expect("run compiled C program");
    assert!(run.status.success(), "C program {tag} failed");
    String::from_utf8(run.stdout)
        .expect("C output is UTF-8")
        .lines()
        .map(|line| {
            let (k, v) = line.split_once(' ').expect("`name value` line");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn compare(abi: Abi, c: &BTreeMap<String, String>) {
    let rust = expected(abi);
    let mut diffs = Vec::new();
    for (k, v) in &rust {
        match c.get(k) {
            Some(cv) if cv == v => {}
            other => diffs.push(format!("{k}: C {other:?}, Rust {v}")),
        }
    }
    for k in c.keys().filter(|k| !rust.contains_key(*k)) {
        diffs.push(format!("{k}: printed by C, not checked in Rust"));
    }
    assert!(
        diffs.is_empty(),
        "{abi:?} layout differs from Xen's blkif.h:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn x86_64_layout_matches_xen_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = run_c(dir.path(), "x86_64", &[]);
    assert!(c.len() > 50, "C program printed too little: {c:?}");
    compare(Abi::X86_64, &c);
}

#[test]
fn x86_32_layout_matches_xen_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = run_c(dir.path(), "x86_32", &["-m32"]);
    assert!(c.len() > 50, "C program printed too little: {c:?}");
    compare(Abi::X86_32, &c);
}

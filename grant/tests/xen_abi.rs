//! The Xen ioctl structures and numbers in `sys/xen.rs` against the C headers: gcc compiles a
//! program over `<xen/gntdev.h>` / `<xen/evtchn.h>` (linux-libc-dev) and `<xen/grant_table.h>`
//! (libxen-dev) that prints every value, and each must equal the Rust one. Fails (never skips)
//! when gcc or the headers are missing.

use std::collections::BTreeMap;
use std::process::Command;

use rustbk_grant::xen::abi_facts;

const HEADERS: &str = "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n\
#include <sys/ioctl.h>\n#include <xen/xen.h>\n#include <xen/grant_table.h>\n\
#include <xen/gntdev.h>\n#include <xen/evtchn.h>\n";

/// A C program printing `EXPR=VALUE` for every fact.
fn c_program(facts: &[(&str, u64)]) -> String {
    let mut src = format!("{HEADERS}int main(void) {{\n");
    for (expr, _) in facts {
        src.push_str(&format!(
            "    printf(\"%s=%llu\\n\", \"{expr}\", (unsigned long long)({expr}));\n"
        ));
    }
    src.push_str("    return 0;\n}\n");
    src
}

fn run_c(src: &str) -> BTreeMap<String, u64> {
    let dir = tempfile::tempdir().unwrap();
    let (c, exe) = (dir.path().join("abi.c"), dir.path().join("abi"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&c)
        .output()
        .expect("gcc must be installed for this test");
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn every_struct_size_offset_and_ioctl_number_matches_the_kernel_headers() {
    let facts = abi_facts();
    let c = run_c(&c_program(&facts));
    assert_eq!(c.len(), facts.len(), "duplicate fact names");
    let wrong: Vec<String> = facts
        .iter()
        .filter(|(k, v)| c[*k] != *v)
        .map(|(k, v)| format!("{k}: rust {v:#x}, C {:#x}", c[*k]))
        .collect();
    assert!(wrong.is_empty(), "ABI mismatches:\n{}", wrong.join("\n"));
}

#[test]
fn every_ioctl_the_platform_issues_is_covered() {
    let names: Vec<&str> = abi_facts().iter().map(|(k, _)| *k).collect();
    for ioctl in [
        "IOCTL_GNTDEV_MAP_GRANT_REF",
        "IOCTL_GNTDEV_UNMAP_GRANT_REF",
        "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR",
        "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
        "IOCTL_GNTDEV_GRANT_COPY",
        "IOCTL_EVTCHN_BIND_INTERDOMAIN",
        "IOCTL_EVTCHN_UNBIND",
        "IOCTL_EVTCHN_NOTIFY",
        "sizeof(struct gntdev_grant_copy_segment)",
        "offsetof(struct ioctl_gntdev_map_grant_ref, refs)",
    ] {
        assert!(names.contains(&ioctl), "{ioctl} is not checked against C");
    }
}

#[test]
fn the_c_side_reports_values_from_the_headers_not_from_rust() {
    // The value given on the Rust side is ignored by the C program: a wrong one would differ.
    let c = run_c(&c_program(&[("sizeof(struct ioctl_evtchn_notify)", 0)]));
    assert_eq!(c["sizeof(struct ioctl_evtchn_notify)"], 4);
}

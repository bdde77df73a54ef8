//! The data paths: grant copy into the worker's bounce buffers instead of mapping, and
//! persistently mapped pages registered as io_uring fixed buffers.

use std::time::Duration;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_grant::emu::EmuDomain;
use rustbk_ring::{GrantRef, status};

use crate::harness::{BACKEND, GUEST, Guest, Host, Setup, XVDA, pattern};
use crate::hostile::still_serves;
use crate::persistent::{
    logged_counter, mapped_grants, read_through, verify, wait_for, write_through,
};

fn setup(args: &[&str]) -> Setup {
    Setup {
        backend_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Setup::default()
    }
}

fn copying() -> Setup {
    setup(&["--data-path", "copy"])
}

/// The counters the backend logs when it exits, after the guest closed the disk.
fn exit_log(host: &mut Host, g: Guest) -> String {
    let spec = host.spec.clone();
    g.front.close().unwrap();
    host.cluster.remove_disk(&spec).unwrap();
    host.backend_log()
}

/// Grants of the guest the backend has mapped: only the ring's in copy mode.
fn only_the_ring_is_mapped(dom: &EmuDomain, ring_pages: usize) {
    assert_eq!(mapped_grants(dom), ring_pages, "data pages stayed mapped");
}

#[test]
fn copy_mode_serves_verified_workloads_without_mapping_or_persistent_grants() {
    let mut host = Host::new(copying());
    let mut g = host.guest();
    assert_eq!(host.xenstore_read_cli("feature-persistent"), "0");
    // One page per request, then 16-page indirect requests.
    verify(&mut g, 4096, 32, true);
    verify(&mut g, 64 << 10, 16, false);
    verify(&mut g, 4096, 8, false);
    only_the_ring_is_mapped(g.dom(), 1);
    let log = exit_log(&mut host, g);
    assert!(logged_counter(&log, "grant_copy_requests") > 2000, "{log}");
    assert_eq!(logged_counter(&log, "persistent_misses"), 0, "{log}");
}

#[test]
fn the_data_path_backend_key_overrides_the_flag() {
    let host = Host::new(Setup {
        data_path: Some("copy".into()),
        ..setup(&["--data-path", "map"])
    });
    let mut g = host.guest();
    assert_eq!(host.xenstore_read_cli("feature-persistent"), "0");
    verify(&mut g, 8192, 16, true);
    only_the_ring_is_mapped(g.dom(), 1);
}

#[test]
fn an_unknown_data_path_key_fails_the_device_with_an_error_node_naming_it() {
    let error = crate::harness::refused_error(1 << 20, |image| VbdSpec {
        data_path: Some("teleport".into()),
        ..VbdSpec::rustbk(GUEST, XVDA, image.display().to_string())
    });
    assert!(
        error.contains("data-path") && error.contains("teleport") && error.contains("copy"),
        "error node: {error:?}"
    );
}

#[test]
fn in_copy_mode_a_guest_can_end_its_grants_at_once_and_a_revoked_grant_gets_an_error() {
    let host = Host::new(copying());
    let mut g = host.guest();
    let (first, refs) = g.pages(2, false);
    let (a, b) = (refs[0], refs[1]);
    let data = pattern(2 * 4096, 33);
    assert_eq!(
        write_through(&mut g, first, &refs, 256, &data),
        status::OKAY
    );
    // Nothing stays mapped, so the guest takes its page back at once (under map with
    // persistent grants this fails until the backend lets go).
    g.dom().end_grant(a).unwrap();
    let marker = vec![0x6bu8; 4096];
    g.dom()
        .ram()
        .write(Guest::frame_addr(first), &marker)
        .unwrap();
    let (st, got) = read_through(&mut g, first, a, 256);
    assert_eq!(st, status::ERROR);
    assert!(got == marker, "a refused read changed the page");
    assert_eq!(
        write_through(&mut g, first, &[a], 300, &marker),
        status::ERROR
    );
    // A scribbled-over entry is refused the same way, and the backend serves on.
    g.dom().revoke_forcibly(b).unwrap();
    assert_eq!(read_through(&mut g, first + 1, b, 264).0, status::ERROR);
    let a2 = g.dom().grant(BACKEND, first, false).unwrap();
    let (st, got) = read_through(&mut g, first, a2, 256);
    assert_eq!((st, &got[..]), (status::OKAY, &data[..4096]));
    still_serves(&mut g, 1);
    assert!(!host.backend_log().contains("panicked"));
}

#[test]
fn in_copy_mode_a_read_into_a_readonly_grant_gets_an_error_and_leaves_the_page_alone() {
    let host = Host::new(copying());
    let mut g = host.guest();
    let data = pattern(4096, 5);
    assert_eq!(g.write(512, &data), status::OKAY);
    let (first, refs) = g.pages(1, true);
    let marker = vec![0x11u8; 4096];
    g.dom()
        .ram()
        .write(Guest::frame_addr(first), &marker)
        .unwrap();
    let (st, got) = read_through(&mut g, first, refs[0], 512);
    assert_eq!(st, status::ERROR);
    assert!(got == marker, "the read-only page was written");
    // Copying out of a read-only grant is what it allows: a write from it works.
    assert_eq!(
        write_through(&mut g, first, &refs, 1024, &marker),
        status::OKAY
    );
    assert_eq!(g.read(1024, 1), (status::OKAY, marker));
}

#[test]
fn in_copy_mode_every_bad_request_gets_an_error_response_and_service_continues() {
    crate::hostile::every_bad_request_is_answered_on(&Host::new(copying()));
}

#[test]
fn fixed_buffers_serve_verified_workloads_through_a_small_cache() {
    let mut host = Host::new(setup(&[
        "--fixed-buffers",
        "on",
        "--max-persistent-grants",
        "16",
    ]));
    let mut g = host.guest_with(|c| c.ring_order = 1);
    verify(&mut g, 4096, 32, true);
    verify(&mut g, 64 << 10, 16, false);
    verify(&mut g, 4096, 32, false);
    let mapped = mapped_grants(g.dom());
    assert!(
        mapped <= 2 + 16,
        "{mapped} grants mapped with a cache of 16"
    );
    let log = exit_log(&mut host, g);
    assert!(
        log.contains("registered as io_uring fixed buffers"),
        "{log}"
    );
    assert!(logged_counter(&log, "fixed_buffer_requests") > 100, "{log}");
    assert!(logged_counter(&log, "persistent_purged") > 0, "{log}");
    assert_eq!(logged_counter(&log, "persistent_cached"), 0, "{log}");
}

#[test]
fn fixed_buffers_off_registers_nothing() {
    let mut host = Host::new(setup(&["--fixed-buffers", "off"]));
    let mut g = host.guest();
    verify(&mut g, 4096, 16, true);
    let log = exit_log(&mut host, g);
    assert_eq!(logged_counter(&log, "fixed_buffer_requests"), 0, "{log}");
    assert!(logged_counter(&log, "persistent_hits") > 0, "{log}");
}

#[test]
fn a_registered_page_left_unused_is_unregistered_and_unmapped() {
    let host = Host::new(setup(&[
        "--fixed-buffers",
        "on",
        "--persistent-grant-unused-secs",
        "1",
    ]));
    let mut g = host.guest();
    let (first, refs) = g.pages(1, false);
    let data = pattern(4096, 44);
    assert_eq!(write_through(&mut g, first, &refs, 64, &data), status::OKAY);
    let (st, got) = read_through(&mut g, first, refs[0], 64);
    assert_eq!((st, got), (status::OKAY, data));
    assert!(g.dom().grant_in_use(refs[0]).unwrap());
    // The registration holds the mapping: only once the sweep unregistered it is the page
    // unmapped and the grant the guest's again.
    assert!(
        wait_for(Duration::from_secs(10), || !g
            .dom()
            .grant_in_use(refs[0])
            .unwrap()),
        "a registered page stayed mapped; log:\n{}",
        host.backend_log()
    );
    g.dom().end_grant(refs[0]).unwrap();
    let again: GrantRef = g.dom().grant(BACKEND, first, false).unwrap();
    let (st, _) = read_through(&mut g, first, again, 64);
    assert_eq!(st, status::OKAY);
}

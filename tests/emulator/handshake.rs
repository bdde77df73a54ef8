//! The xenbus handshake: connect, close, reconnect, protocols, ring orders, xenstore contents.

use rustbk_blkfront::{FrameAlloc, Frontend};
use rustbk_ring::{Abi, status};

use crate::harness::{Host, Setup, pattern};

#[test]
fn handshake_reaches_connected_and_publishes_the_disk() {
    let host = Host::new(Setup::default());
    let g = host.guest();
    let d = g.front.disk();
    assert_eq!(d.sectors, (64 << 20) / 512);
    assert_eq!(d.sector_size, 512);
    assert!(d.flush && d.barrier && d.discard);
    assert_eq!(d.max_indirect_segments, 256);
    assert_eq!(g.front.backend_state().unwrap(), 4);
}

#[test]
fn real_xenstore_cli_reads_what_the_backend_wrote() {
    let host = Host::new(Setup::default());
    let _g = host.guest();
    assert_eq!(host.xenstore_read_cli("state"), "4");
    assert_eq!(
        host.xenstore_read_cli("sectors"),
        ((64u64 << 20) / 512).to_string()
    );
    assert_eq!(host.xenstore_read_cli("feature-flush-cache"), "1");
    assert_eq!(host.xenstore_read_cli("max-ring-page-order"), "4");
    let out = std::process::Command::new("xenstore-ls")
        .arg(host.spec.backend_path())
        .env("XENSTORED_PATH", host.cluster.xenstore_socket())
        .output()
        .expect("xenstore-ls (package xenstore-utils) must be installed");
    let listing = String::from_utf8_lossy(&out.stdout);
    for key in [
        "feature-discard",
        "feature-barrier",
        "feature-max-indirect-segments",
        "sector-size",
        "info",
    ] {
        assert!(
            listing.contains(key),
            "{key} missing from xenstore-ls output:\n{listing}"
        );
    }
}

#[test]
fn close_goes_through_closed_and_reconnect_serves_the_same_data() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    let data = pattern(8192, 7);
    assert_eq!(g.write(128, &data), status::OKAY);
    let cfg = g.cfg.clone();
    let closed = g.front.close().expect("close handshake");
    assert_eq!(
        closed
            .xs
            .read(&format!("{}/state", host.spec.backend_path()))
            .unwrap(),
        "6"
    );
    // The guest "reboots": same domain, new frontend instance.
    let front =
        Frontend::connect(closed.dom, closed.xs, closed.frames, cfg.clone()).expect("reconnect");
    let mut g = crate::harness::Guest::from_parts(front, cfg);
    let (st, back) = g.read(128, 2);
    assert_eq!(st, status::OKAY);
    assert_eq!(back, data);
}

#[test]
fn x86_32_frontend_with_and_without_protocol_key_works() {
    for write_protocol in [true, false] {
        let host = Host::new(Setup::default());
        let mut g = host.guest_with(|c| {
            c.abi = Abi::X86_32;
            c.write_protocol = write_protocol;
        });
        let data = pattern(4096, 3);
        assert_eq!(g.write(8, &data), status::OKAY);
        let (st, back) = g.read(8, 1);
        assert_eq!(
            (st, back),
            (status::OKAY, data),
            "protocol key written: {write_protocol}"
        );
    }
}

/// Every order, then back to one page: a reconnecting frontend's keys from the last
/// connection (`ring-page-order`, `ring-ref0`...) are gone before it publishes new ones.
#[test]
fn multi_page_rings_of_every_order_work() {
    let host = Host::new(Setup::default());
    let mut closed = None;
    for (step, order) in [0, 1, 2, 3, 4, 0].into_iter().enumerate() {
        let mut g = match closed.take() {
            None => host.guest_with(|c| c.ring_order = order),
            Some(parts) => reconnect(parts, order),
        };
        assert_eq!(g.front.disk().ring_order, order);
        assert_eq!(g.front.free_slots(), 32 << order);
        let data = pattern(4096, step as u8);
        assert_eq!(g.write(step as u64 * 8, &data), status::OKAY);
        assert_eq!(g.read(step as u64 * 8, 1), (status::OKAY, data));
        closed = Some((g.front.close().unwrap(), g.cfg));
    }
}

fn reconnect(
    parts: (rustbk_blkfront::Closed, rustbk_blkfront::FrontendConfig),
    order: u32,
) -> crate::harness::Guest {
    let (closed, mut cfg) = parts;
    cfg.ring_order = order;
    let frames: FrameAlloc = closed.frames;
    let front = Frontend::connect(closed.dom, closed.xs, frames, cfg.clone()).expect("reconnect");
    crate::harness::Guest::from_parts(front, cfg)
}

/// libxl removes a device's directory once it reads Closed. If the backend reaches Closed
/// because the frontend closed, and the directory is gone before the backend reads `online`
/// (a race the test above hit once), the missing key must read as the device going away:
/// the backend exits instead of waiting for an `online` that no longer exists.
#[test]
fn a_closed_device_whose_directory_the_toolstack_removed_ends_its_backend() {
    let mut host = Host::new(Setup::default());
    let g = host.guest();
    let be = g.front.backend_path().to_owned();
    g.front.close().expect("close");
    let xs = host.cluster.toolstack().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while xs.read(&format!("{be}/state")).ok().as_deref() != Some("6") {
        assert!(
            std::time::Instant::now() < deadline,
            "backend never went to Closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    xs.rm(&be).unwrap();
    xs.rm(&host.spec.frontend_path()).unwrap();
    let spec = host.spec.clone();
    let status = host
        .cluster
        .wait_backend_exit(&spec)
        .expect("backend exits");
    assert!(status.success(), "{status:?}");
    assert!(
        xs.read(&format!("{be}/state")).is_err(),
        "the backend wrote into the removed directory"
    );
}

#[test]
fn toolstack_removal_closes_the_device_and_ends_the_backend() {
    let mut host = Host::new(Setup::default());
    let g = host.guest();
    let closer = std::thread::spawn(move || {
        // Like blkfront, close when the backend asks for it.
        let be = format!("{}/state", g.front.backend_path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while g.front.xs().read(&be).unwrap_or_default() != "5" {
            assert!(
                std::time::Instant::now() < deadline,
                "backend never went to Closing"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        g.front.close().expect("close after backend Closing");
    });
    let spec = host.spec.clone();
    host.cluster
        .remove_disk(&spec)
        .expect("backend exits after removal");
    closer.join().unwrap();
}

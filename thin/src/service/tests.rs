//! Service tests in this process: ports over the socket from threads, hostile frames, the
//! socket's rules. The tests with other processes are in `tests_proc.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::child::{self, verify_workload};
use super::wire::{self, Reply, Request};
use super::{Service, SocketPort, open_volume};
use crate::error::Error;
use crate::pool::{FreshData, Pool, PoolOptions, VolumeSpec};
use crate::port::{NewMapping, PoolPort};
use crate::testing::{META_BYTES, queue, sized_file, thin_check, us};
use crate::volume::{ThinVolume, VolumeOptions};

pub(super) const MIB: u64 = 1 << 20;
pub(super) const BS: u64 = 64 << 10;

/// A pool served on a socket in a temporary folder.
pub(super) struct Served {
    pub dir: tempfile::TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub service: Service,
}

/// A new pool of `blocks` blocks of 64 KiB with volumes `ids` of `size` bytes, served.
pub(super) fn served(blocks: u64, ids: &[u64], size: u64) -> Served {
    served_with(blocks, ids, size, PoolOptions::default())
}

/// [`served`] with pool options of its own.
pub(super) fn served_with(blocks: u64, ids: &[u64], size: u64, opts: PoolOptions) -> Served {
    crate::testing::capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = pool_files(&dir, blocks);
    let pool = Pool::create(&meta, &data, BS, opts).unwrap();
    for &id in ids {
        let spec = VolumeSpec {
            size,
            ..VolumeSpec::default()
        };
        pool.create_volume(id, spec).unwrap();
    }
    let socket = dir.path().join("pool.sock");
    let service = Service::start(pool, &socket).unwrap();
    Served {
        dir,
        meta,
        data,
        socket,
        service,
    }
}

/// Metadata and data files of a pool of `blocks` blocks.
pub(super) fn pool_files(dir: &tempfile::TempDir, blocks: u64) -> (PathBuf, PathBuf) {
    let meta = dir.path().join("meta");
    let data = dir.path().join("data");
    sized_file(&meta, META_BYTES);
    sized_file(&data, BS * blocks);
    (meta, data)
}

/// Serves `id` of the service's pool in this process (to read what a worker wrote).
pub(super) fn local(s: &Served, id: u64) -> ThinVolume {
    ThinVolume::open_local(s.service.pool(), id, VolumeOptions::default()).unwrap()
}

/// Waits until volume `id` has no port open.
pub(super) fn wait_closed(pool: &Pool, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool
        .volumes()
        .unwrap()
        .iter()
        .any(|v| v.id == id && v.ports > 0)
    {
        assert!(Instant::now() < deadline, "volume {id} still has a port");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the test binary's child role named by the environment (see `child.rs`); does
/// nothing in a normal test run, where it is ignored.
#[test]
#[ignore = "the service tests run it in a child process"]
fn child_entry() {
    if let Ok(role) = std::env::var(child::CHILD_ENV) {
        child::run_role(&role);
    }
}

#[test]
fn two_socket_ports_in_two_threads_serve_two_volumes_of_one_pool() {
    let s = served(256, &[1, 2], 4 * MIB);
    let threads: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|id| {
            let socket = s.socket.clone();
            std::thread::spawn(move || {
                let vol = open_volume(&socket, id, VolumeOptions::default()).unwrap();
                verify_workload(&vol, id * 1000, 100);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_closed(s.service.pool(), 1);
    wait_closed(s.service.pool(), 2);
    for id in [1u64, 2] {
        let vol = local(&s, id);
        child::check_units(queue(&vol).as_mut(), id * 1000, 100);
    }
    let Served {
        dir,
        meta,
        data,
        service,
        ..
    } = s;
    service.stop().unwrap();
    thin_check(&meta);
    let pool = Pool::open(&meta, &data, PoolOptions::default()).unwrap();
    let vol = ThinVolume::open_local(&pool, 2, VolumeOptions::default()).unwrap();
    child::check_units(queue(&vol).as_mut(), 2000, 100);
    drop(dir);
}

#[test]
fn a_second_service_on_a_live_socket_is_refused_and_a_stale_socket_is_replaced() {
    let s = served(16, &[1], MIB);
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir2 = tempfile::tempdir().unwrap();
    let (meta2, data2) = pool_files(&dir2, 16);
    let pool2 = Pool::create(&meta2, &data2, BS, PoolOptions::default()).unwrap();
    let refused = Service::start(pool2, &s.socket);
    assert!(
        matches!(refused, Err(Error::Busy(_))),
        "{:?}",
        refused.err()
    );
    // A socket nobody listens on (its service was killed) is stale.
    let stale = dir2.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let pool3 = Pool::create(&meta2, &data2, BS, PoolOptions::default()).unwrap();
    let again = Service::start(pool3, &stale).unwrap();
    SocketPort::connect(&stale, 0).err().unwrap();
    again.stop().unwrap();
    assert!(
        !stale.exists(),
        "the socket is removed when the service stops"
    );
}

/// Sends raw bytes as a connection would, and reads what comes back until the service closes
/// the connection; panics if it stays open.
fn until_closed(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A connection closed with frames it did not read is reset after what it sent.
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the service does not close the connection: {e}"),
        }
    }
}

fn frame(request: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::write_frame(&mut buf, request).unwrap();
    buf
}

fn replies(bytes: &[u8]) -> Vec<Reply> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some(reply) = wire::read_frame::<Reply>(&mut rest).unwrap() {
        out.push(reply);
    }
    out
}

#[test]
fn hostile_frames_close_only_their_own_connection() {
    let s = served(256, &[1, 2], 4 * MIB);
    let good = open_volume(&s.socket, 1, VolumeOptions::default()).unwrap();
    verify_workload(&good, 11, 50);
    let free = s.service.pool().usage().unwrap().data_free;

    // A length far past the bound, before any body.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(until_closed(&s.socket, &huge).is_empty());
    // Garbage in a frame of a sane length.
    let mut garbage = 5u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"hello");
    assert!(until_closed(&s.socket, &garbage).is_empty());
    // Not opening a volume first.
    assert!(until_closed(&s.socket, &frame(&Request::Commit)).is_empty());
    // Provisioned blocks, then a map of a block never handed to this connection, then a
    // frame the service must not get to.
    let mut bytes = frame(&Request::Open {
        volume: 2,
        protocol: wire::PROTOCOL,
    });
    bytes.extend(frame(&Request::Provision { count: 5 }));
    bytes.extend(frame(&Request::Map {
        mappings: vec![(0, 3)],
    }));
    bytes.extend(frame(&Request::Commit));
    let got = replies(&until_closed(&s.socket, &bytes));
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(got[1], Reply::Blocks { ref blocks, .. } if blocks.len() == 5));
    assert!(matches!(got[2], Reply::Failed { .. }), "{:?}", got[2]);

    wait_closed(s.service.pool(), 2);
    assert_eq!(s.service.pool().usage().unwrap().data_free, free);
    verify_workload(&good, 12, 50);
    let mut q = queue(&good);
    child::check_units(q.as_mut(), 12, 50);
}

/// A frame with a raw JSON body, as a client of another rustbk version would send it.
fn raw_frame(body: &str) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[test]
fn clients_of_another_protocol_version_are_told_why_and_closed() {
    let s = served(64, &[1], MIB);
    let old_open = raw_frame(r#"{"op":"open","volume":1}"#);
    let newer_admin = raw_frame(&format!(
        r#"{{"op":"admin","protocol":{}}}"#,
        wire::PROTOCOL + 1
    ));
    for (first, spoken) in [(old_open, 0), (newer_admin, wire::PROTOCOL + 1)] {
        let mut bytes = first;
        bytes.extend(frame(&Request::Info));
        let got = replies(&until_closed(&s.socket, &bytes));
        let [Reply::Failed { error }] = got.as_slice() else {
            panic!("one refusal, then the end: {got:?}");
        };
        let why = Error::from(error.clone()).to_string();
        let versions = format!("protocol {spoken} and this service {}", wire::PROTOCOL);
        assert!(why.contains(&versions), "{why}");
    }
    // The volume was never opened: a client of this version opens it.
    let mut port = SocketPort::connect(&s.socket, 1).unwrap();
    port.commit().unwrap();
}

#[test]
fn a_worker_told_nothing_by_an_older_service_says_to_upgrade_it() {
    // A service from before the protocol had a version closes the connection at a first
    // frame it cannot read (a field it does not know), without a reply.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let old = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let first = wire::read_frame::<serde_json::Value>(&mut stream).unwrap();
        drop(stream);
        first
    });
    let e = SocketPort::connect(&socket, 1)
        .err()
        .expect("the open fails");
    let first = old.join().unwrap().expect("a first frame");
    assert_eq!(first["protocol"], wire::PROTOCOL, "{first}");
    let why = e.to_string();
    assert!(why.contains("older rustbk"), "{why}");
}

#[test]
fn a_port_maps_only_blocks_it_was_given_through_the_socket() {
    let s = served(64, &[1, 2], MIB);
    let mut a = SocketPort::connect(&s.socket, 1).unwrap();
    let mut b = SocketPort::connect(&s.socket, 2).unwrap();
    let blocks = a.provision(2).unwrap();
    let theirs = NewMapping {
        vblock: 0,
        block: blocks[0],
    };
    let e = b.map(&[theirs]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    // b's connection is cut; a's goes on.
    assert!(b.commit().is_err());
    a.map(&[theirs]).unwrap();
    a.commit().unwrap();
    assert_eq!(a.lookup(0..1).unwrap()[0].1.block, blocks[0]);
    a.release(&blocks[1..]).unwrap();
}

#[test]
fn blocks_of_a_full_pool_come_through_the_socket_marked_as_reading_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sized_file(&meta, META_BYTES);
    std::fs::write(&data, vec![0u8; us(BS * 8)]).unwrap();
    let pool =
        Pool::create_on_fresh_data(&meta, &data, BS, PoolOptions::default(), FreshData::Filled)
            .unwrap();
    let spec = VolumeSpec {
        size: MIB,
        ..VolumeSpec::default()
    };
    pool.create_volume(1, spec).unwrap();
    let socket = dir.path().join("pool.sock");
    let _service = Service::start(pool, &socket).unwrap();
    let mut port = SocketPort::connect(&socket, 1).unwrap();
    let first = port.provision_zeroed(3).unwrap();
    assert_eq!(
        first.zeroed, first.blocks,
        "a new full pool's blocks read zeros"
    );
    port.release(&first.blocks).unwrap();
    let again = port.provision_zeroed(8).unwrap();
    for b in &first.blocks {
        assert!(
            again.blocks.contains(b) && !again.zeroed.contains(b),
            "{b} was handed out"
        );
    }
    assert_eq!(
        again.zeroed.len(),
        5,
        "the blocks never handed out still read zeros"
    );
}

#[test]
fn refills_asked_ahead_through_the_socket_keep_their_answers_apart_from_maps_and_calls() {
    let s = served(64, &[1], MIB);
    let mut port = SocketPort::connect(&s.socket, 1).unwrap();
    let first = port.provision_zeroed(2).unwrap();
    let ahead = port.provision_ahead(3).expect("sent");
    let maps: Vec<NewMapping> = (first.blocks.iter().enumerate())
        .map(|(v, &block)| NewMapping {
            vblock: v as u64,
            block,
        })
        .collect();
    let map = match port.map_start(&maps) {
        crate::port::MapStart::Sent(ticket) => ticket,
        crate::port::MapStart::Done(r) => panic!("a socket port sends maps ahead: {r:?}"),
    };
    let second = port.provision_ahead(4).expect("sent");
    // A call in between takes the answers of everything sent before it.
    assert_eq!(port.lookup(0..2).unwrap().len(), 2);
    let got = port
        .provision_answer(ahead, false)
        .expect("answered")
        .unwrap();
    assert_eq!(got.blocks.len(), 3);
    assert!(port.map_answer(map).expect("answered").is_ok());
    let more = port
        .provision_answer(second, true)
        .expect("waited for")
        .unwrap();
    assert_eq!(more.blocks.len(), 4);
    let all: std::collections::HashSet<u64> = (first
        .blocks
        .iter()
        .chain(&got.blocks)
        .chain(&more.blocks)
        .copied())
    .collect();
    assert_eq!(all.len(), 9, "no block handed out twice");
    assert!(
        port.provision_answer(ahead, false).unwrap().is_err(),
        "taken once"
    );
    drop(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let free = || s.service.pool().usage().unwrap().data_free;
    while free() != 62 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        free(),
        62,
        "the unmapped blocks came back with the connection"
    );
}

/// Runs `body` while another thread holds the service's pool lock for `hold`, from 100 ms
/// before `body` starts.
fn while_the_service_is_held(s: &Served, hold: Duration, body: impl FnOnce()) {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        scope.spawn(move || {
            let pool = s.service.pool();
            tx.send(()).unwrap();
            pool.hold_lock(hold);
        });
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        body();
    });
}

#[test]
fn a_read_completes_while_a_first_write_waits_for_the_service_to_map_its_block() {
    use rustbk_formats::suite::{read_at, write_at};
    use rustbk_formats::{IoOp, SharedBuf};
    let s = served(64, &[1], MIB);
    let vol = open_volume(&s.socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    // Block 0 mapped and committed; the reserve holds blocks for the next first write.
    write_at(q.as_mut(), 0, &[1; 4096]).unwrap();
    rustbk_formats::suite::run(q.as_mut(), IoOp::Flush).unwrap();
    let hold = Duration::from_secs(3);
    while_the_service_is_held(&s, hold, || {
        let start = Instant::now();
        let written = SharedBuf::new(4096);
        let write = IoOp::Write {
            offset: 2 * BS,
            bufs: Box::new(written),
        };
        q.submit(write, 1).unwrap();
        let got = read_at(q.as_mut(), 0, 4096).unwrap();
        let read_took = start.elapsed();
        assert_eq!(got, vec![1; 4096]);
        assert!(
            read_took < hold / 2,
            "the read waited {read_took:?} for the map of another op"
        );
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(Some(Duration::from_secs(1))).unwrap();
            q.reap(&mut done);
        }
        assert_eq!(done[0].tag, 1);
        done.remove(0).result.unwrap();
        assert!(
            start.elapsed() >= hold / 2,
            "the map was answered under the lock"
        );
    });
}

/// A worker overwrites its provisioned blocks and reads them with no round trip to the
/// service: 200 overwrites and reads complete while the service's pool lock is held.
#[test]
fn overwrites_of_provisioned_blocks_complete_while_the_service_is_held() {
    use rustbk_formats::IoOp;
    use rustbk_formats::suite::{read_at, write_at};
    let s = served(64, &[1], MIB);
    let vol = open_volume(&s.socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    // Blocks 0..4 mapped and committed: exclusive to volume 1, in its worker's cache.
    write_at(q.as_mut(), 0, &vec![1; us(4 * BS)]).unwrap();
    rustbk_formats::suite::run(q.as_mut(), IoOp::Flush).unwrap();
    let hold = Duration::from_secs(3);
    while_the_service_is_held(&s, hold, || {
        let start = Instant::now();
        for i in 0..200u64 {
            let offset = (i % 4) * BS + (i * 4096) % BS;
            let data = vec![u8::try_from(i % 250).unwrap() + 2; 4096];
            write_at(q.as_mut(), offset, &data).unwrap();
            assert_eq!(read_at(q.as_mut(), offset, 4096).unwrap(), data);
        }
        let took = start.elapsed();
        assert!(
            took < hold / 2,
            "200 overwrites took {took:?}: they waited for the held service"
        );
    });
}

#[test]
fn a_call_to_a_service_that_does_not_answer_fails_within_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mute = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut sink = [0u8; 256];
        while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    let start = Instant::now();
    let timeout = Duration::from_millis(500);
    let e = SocketPort::connect_with_timeout(&socket, 1, timeout).err();
    let took = start.elapsed();
    assert!(matches!(e, Some(Error::Service(_))), "{e:?}");
    assert!(
        took >= timeout && took < Duration::from_secs(10),
        "{took:?}"
    );
    mute.join().unwrap();
}

#[test]
fn a_worker_that_stops_reading_loses_its_connection_and_does_not_hold_up_a_snapshot() {
    // The pool waits up to 30 s for the pause: the service must close the silent connection
    // well before (its sends time out after 5 s), also on a loaded machine.
    let opts = PoolOptions {
        pause_timeout: Duration::from_secs(30),
        ..PoolOptions::default()
    };
    let s = served_with(64, &[1], MIB, opts);
    let mut stream = UnixStream::connect(&s.socket).unwrap();
    stream
        .write_all(&frame(&Request::Open {
            volume: 1,
            protocol: wire::PROTOCOL,
        }))
        .unwrap();
    let opened = wire::read_frame::<Reply>(&mut stream).unwrap();
    assert!(matches!(opened, Some(Reply::Info { .. })), "{opened:?}");
    // Ask and never read the answers, until the service's replies fill the socket and it
    // is stuck in a send: then it stops taking requests. A send buffer that is merely full
    // is not enough (a loaded service may answer everything queued and wait for more), so
    // go on until no request was taken for two seconds.
    stream.set_nonblocking(true).unwrap();
    let info = frame(&Request::Info);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken = Instant::now();
    while taken.elapsed() < Duration::from_secs(2) {
        assert!(
            Instant::now() < deadline,
            "the service never stopped reading"
        );
        match stream.write(&info) {
            Ok(n) => {
                assert_eq!(n, info.len(), "a frame is written whole or not at all");
                taken = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            // It gave up on this connection already (its send timed out).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => panic!("{e}"),
        }
    }
    let start = Instant::now();
    let snapshot = s.service.pool().snapshot(1, 2, "snap");
    let took = start.elapsed();
    assert!(
        snapshot.is_ok() && took < Duration::from_secs(15),
        "{snapshot:?} after {took:?}"
    );
    wait_closed(s.service.pool(), 1);
}

#[test]
fn a_discard_of_more_blocks_than_a_frame_holds_frees_every_one() {
    let s = served(6000, &[1], 8192 * BS);
    let mut port = SocketPort::connect(&s.socket, 1).unwrap();
    let mut mapped = 0u64;
    while mapped < 5000 {
        let blocks = port
            .provision(usize::try_from(5000 - mapped).unwrap().min(1000))
            .unwrap();
        let batch: Vec<NewMapping> = (mapped..)
            .zip(blocks)
            .map(|(vblock, block)| NewMapping { vblock, block })
            .collect();
        mapped += batch.len() as u64;
        port.map(&batch).unwrap();
    }
    let free = s.service.pool().usage().unwrap().data_free;
    let freed = port.unmap(0..8192).unwrap();
    assert_eq!(freed.len(), 5000);
    assert!(port.lookup(0..8192).unwrap().is_empty());
    port.commit().unwrap();
    assert_eq!(s.service.pool().usage().unwrap().data_free, free + 5000);
}

#[test]
fn a_service_with_an_idle_exit_stops_once_nothing_was_connected_for_that_long() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = pool_files(&dir, 64);
    drop(Pool::create(&meta, &data, BS, PoolOptions::default()).unwrap());
    let socket = dir.path().join("idle.sock");
    let start = Instant::now();
    let service = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let idle = Some(Duration::from_secs(1));
            super::run_until(&meta, &data, &socket, PoolOptions::default(), (&stop, idle))
        })
    };
    while UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    // An open connection keeps it up past its idle time.
    let admin = super::AdminClient::connect(&socket, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!service.is_finished(), "stopped with a connection open");
    let closed = Instant::now();
    drop(admin);
    service.join().unwrap().unwrap();
    let idle = closed.elapsed();
    assert!(
        idle >= Duration::from_secs(1) && idle < Duration::from_secs(15),
        "{idle:?}"
    );
    assert!(!socket.exists(), "the socket outlived the service");
}

#[test]
fn a_served_pool_grows_online_and_a_write_queued_for_space_goes_on() {
    let opts = PoolOptions {
        on_full: crate::pool::OnFull::Queue,
        full_timeout: Duration::from_secs(30),
        ..PoolOptions::default()
    };
    let s = served_with(32, &[1], 64 * BS, opts);
    let mut port = SocketPort::connect(&s.socket, 1).unwrap();
    let mut taken = 0;
    while taken < 32 {
        taken += port.provision(32 - taken).unwrap().len();
    }
    // The pool is full: the next provision waits for space.
    let waiter = std::thread::spawn(move || port.provision(1).map(|b| b.len()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "a provision of a full pool waits");
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.data)
        .unwrap();
    data.set_len(48 * BS).unwrap();
    let mut admin = super::AdminClient::connect(&s.socket, Duration::from_secs(10)).unwrap();
    let (data_blocks, _) = admin.grow().unwrap();
    assert_eq!(data_blocks, 48);
    assert_eq!(waiter.join().unwrap().unwrap(), 1);
    // The port closed with its thread, and the service gives back every block it held once
    // it has read the close (on the connection's own thread).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut usage = admin.usage().unwrap();
    while usage.data_free != 48 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        usage = admin.usage().unwrap();
    }
    assert_eq!((usage.data_blocks, usage.data_free), (48, 48));
    thin_check(&s.meta);
}

#[test]
fn a_full_served_pool_asks_other_workers_for_their_reserves_and_waits_for_their_answers() {
    let s = served(32, &[1, 2, 3], 64 * BS);
    let mut a = SocketPort::connect(&s.socket, 1).unwrap();
    let mut b = SocketPort::connect(&s.socket, 2).unwrap();
    let held = a.provision(16).unwrap();
    let mut taken = 0;
    while taken < 16 {
        taken += b.provision(16 - taken).unwrap().len();
    }
    // The pool is full: b's provision waits for a's answer to the request.
    let waiter = std::thread::spawn(move || (b.provision(4).map(|got| got.len()), b));
    let asked = Instant::now();
    while !a.give_back_requested() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "a was never asked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    a.release(&held[..10]).unwrap();
    let (got, mut b) = waiter.join().unwrap();
    assert_eq!(got.unwrap(), 4);
    assert_eq!(
        b.provision(16).unwrap().len(),
        6,
        "what a gave back and b did not take"
    );
    // a still holds 6 blocks (in flight, say): asked again, it answers with nothing, and the
    // provision fails as soon as it did.
    let waiter = std::thread::spawn(move || (b.provision(16).map(|got| got.len()), b));
    while !a.give_back_requested() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "a was not asked again"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let answered = Instant::now();
    a.release(&[]).unwrap();
    let (got, mut b) = waiter.join().unwrap();
    assert_eq!(got.expect_err("full").errno(), libc::ENOSPC);
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "{:?}",
        answered.elapsed()
    );
    // A worker that does not answer holds a write back for 2 s at most.
    drop(a);
    // The service gives a's blocks back once it has read the close (on the connection's own
    // thread); until then the pool is full and c's provision would wait for b.
    let deadline = Instant::now() + Duration::from_secs(10);
    let free = || s.service.pool().usage().unwrap().data_free;
    while free() != 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = SocketPort::connect(&s.socket, 3).unwrap();
    assert_eq!(
        c.provision(16).unwrap().len(),
        6,
        "a's blocks came back when it closed"
    );
    let start = Instant::now();
    let refused = b.provision(1).expect_err("full");
    assert_eq!(refused.errno(), libc::ENOSPC);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(c.give_back_requested());
    // Once silent past its wait, it is not waited for again until it answers.
    std::thread::sleep(Duration::from_millis(2100));
    let start = Instant::now();
    let refused = b.provision(1).expect_err("still full");
    assert_eq!(refused.errno(), libc::ENOSPC);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    thin_check(&s.meta);
}

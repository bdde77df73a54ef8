//! Malformed and hostile input on a raw socket: the server answers with an
//! error or drops that connection, and keeps serving everybody else.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::TestServer;
use rustbk_xenstored::wire::{Header, Message, MsgType};

fn raw(s: &TestServer) -> UnixStream {
    let stream = UnixStream::connect(s.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn send(
    stream: &mut UnixStream,
    msg_type: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Message {
    let msg = Message {
        msg_type,
        req_id,
        tx_id,
        payload: payload.to_vec(),
    };
    msg.write_to(stream).unwrap();
    Message::read_from(stream).unwrap()
}

fn assert_error(reply: &Message, name: &str) {
    assert_eq!(reply.msg_type, MsgType::Error.to_u32(), "{reply:?}");
    assert_eq!(reply.payload, format!("{name}\0").as_bytes());
}

fn assert_server_alive(s: &TestServer) {
    let c = s.dom0();
    c.write("/alive", "yes").unwrap();
    assert_eq!(c.read("/alive").unwrap(), "yes");
}

#[test]
fn oversized_length_closes_only_that_connection() {
    let s = TestServer::start();
    let mut bad = raw(&s);
    let header = Header {
        msg_type: MsgType::Write.to_u32(),
        req_id: 1,
        tx_id: 0,
        len: 1_000_000,
    };
    bad.write_all(&header.encode()).unwrap();
    let _ = bad.write_all(&[b'x'; 512]);
    let mut buf = [0u8; 16];
    assert_eq!(
        bad.read(&mut buf).unwrap_or(0),
        0,
        "connection must be closed"
    );
    assert_server_alive(&s);
}

#[test]
fn unknown_and_reply_only_types_get_enosys_with_ids_echoed() {
    let s = TestServer::start();
    let mut c = raw(&s);
    for ty in [
        20,
        23,
        999,
        0xffff,
        MsgType::WatchEvent.to_u32(),
        MsgType::Error.to_u32(),
    ] {
        let reply = send(&mut c, ty, 77, 0, b"junk\0");
        assert_eq!(reply.req_id, 77);
        assert_error(&reply, "ENOSYS");
    }
    let reply = send(&mut c, MsgType::Read.to_u32(), 5, 31337, b"/tool\0");
    assert_eq!((reply.req_id, reply.tx_id), (5, 31337));
    assert_error(&reply, "ENOENT");
    assert_server_alive(&s);
}

#[test]
fn malformed_payloads_get_einval() {
    let s = TestServer::start();
    let mut c = raw(&s);
    let read = MsgType::Read.to_u32();
    assert_error(&send(&mut c, read, 1, 0, b"/tool"), "EINVAL");
    assert_error(&send(&mut c, read, 1, 0, b""), "EINVAL");
    assert_error(&send(&mut c, read, 1, 0, b"/a\0/b\0"), "EINVAL");
    assert_error(&send(&mut c, read, 1, 0, b"/\xff\xfe\0"), "EINVAL");
    assert_error(&send(&mut c, read, 1, 0, b"/a//b\0"), "EINVAL");
    assert_error(
        &send(&mut c, MsgType::Write.to_u32(), 1, 0, b"no-nul-at-all"),
        "EINVAL",
    );
    assert_error(
        &send(&mut c, MsgType::Watch.to_u32(), 1, 0, b"/only-path\0"),
        "EINVAL",
    );
    assert_error(
        &send(&mut c, MsgType::SetPerms.to_u32(), 1, 0, b"/tool\0x9\0"),
        "EINVAL",
    );
    assert_error(
        &send(&mut c, MsgType::TransactionEnd.to_u32(), 1, 0, b"maybe\0"),
        "EINVAL",
    );
    assert_error(
        &send(&mut c, MsgType::Introduce.to_u32(), 1, 0, b"5\0"),
        "EINVAL",
    );
    let long = format!("/{}\0", "a".repeat(3100));
    assert_error(
        &send(&mut c, MsgType::Write.to_u32(), 1, 0, long.as_bytes()),
        "EINVAL",
    );
    assert_server_alive(&s);
}

#[test]
fn binary_values_are_stored_verbatim() {
    let s = TestServer::start();
    let mut c = raw(&s);
    let mut payload = b"/bin\0".to_vec();
    payload.extend_from_slice(&[0xff, 0, 1, 0xfe]);
    let reply = send(&mut c, MsgType::Write.to_u32(), 9, 0, &payload);
    assert_eq!(reply.payload, b"OK\0");
    let reply = send(&mut c, MsgType::Read.to_u32(), 10, 0, b"/bin\0");
    assert_eq!(reply.msg_type, MsgType::Read.to_u32());
    assert_eq!(reply.payload, [0xff, 0, 1, 0xfe]);
}

#[test]
fn oversized_reply_is_e2big() {
    let s = TestServer::start();
    let c = s.dom0();
    for i in 0..200 {
        c.mkdir(&format!("/wide/a-rather-long-child-name-{i:05}"))
            .unwrap();
    }
    let err = c.directory("/wide").unwrap_err();
    assert_eq!(err.errno(), Some(rustbk_xenstored::Errno::E2big));
}

#[test]
fn clients_vanishing_mid_message_do_not_disturb_others() {
    let s = TestServer::start();
    let watcher = s.dom0();
    watcher.watch("/churn", "tok").unwrap();
    for i in 0..50u32 {
        let mut c = raw(&s);
        match i % 3 {
            // Half a header.
            0 => c.write_all(&[1, 0, 0]).unwrap(),
            // A header promising more payload than sent.
            1 => {
                let h = Header {
                    msg_type: MsgType::Write.to_u32(),
                    req_id: i,
                    tx_id: 0,
                    len: 100,
                };
                c.write_all(&h.encode()).unwrap();
                c.write_all(b"/churn\0").unwrap();
            }
            // A watch and an open transaction, then gone without reading.
            _ => {
                let m = Message::new(MsgType::Watch, i, 0, b"/churn\0x\0".to_vec());
                m.write_to(&mut c).unwrap();
                let t = Message::new(MsgType::TransactionStart, i + 1, 0, b"\0".to_vec());
                t.write_to(&mut c).unwrap();
            }
        }
    }
    assert_server_alive(&s);
    watcher.write("/churn/x", "1").unwrap();
    let mut paths = Vec::new();
    while let Some(e) = watcher.next_event(Duration::from_millis(300)).unwrap() {
        paths.push(e.path);
    }
    assert!(paths.contains(&"/churn/x".to_owned()), "{paths:?}");
}

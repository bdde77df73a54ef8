//! Debian's real `xenstore-*` tools (xenstore-utils, libxenstore 4.17)
//! against the emulator. A missing tool fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TestServer;
use rustbk_xenstored::Perm;

fn tool_path(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: install Debian package xenstore-utils"
    );
    path
}

fn run(server: &TestServer, name: &str, args: &[&str]) -> Output {
    Command::new(tool_path(name))
        .args(args)
        .env("XENSTORED_PATH", server.socket())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

fn ok(server: &TestServer, name: &str, args: &[&str]) -> String {
    let out = run(server, name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn write_read_list_exists_ls_and_rm_work_with_cli_tools() {
    let s = TestServer::start();
    ok(&s, "xenstore-write", &["/vm/a", "one", "/vm/b", "two"]);
    assert_eq!(ok(&s, "xenstore-read", &["/vm/a"]), "one\n");
    assert_eq!(s.dom0().read("/vm/b").unwrap(), "two");
    assert_eq!(ok(&s, "xenstore-list", &["/vm"]), "a\nb\n");
    assert!(run(&s, "xenstore-exists", &["/vm/a"]).status.success());
    assert!(!run(&s, "xenstore-exists", &["/vm/zz"]).status.success());
    let ls = ok(&s, "xenstore-ls", &["/vm"]);
    assert!(
        ls.contains("a = \"one\"") && ls.contains("b = \"two\""),
        "{ls}"
    );
    let ls_root = ok(&s, "xenstore-ls", &["-f"]);
    assert!(
        ls_root.contains("/tool/xenstored") && ls_root.contains("/vm/b = \"two\""),
        "{ls_root}"
    );

    ok(&s, "xenstore-rm", &["/vm/a"]);
    let read = run(&s, "xenstore-read", &["/vm/a"]);
    assert!(!read.status.success());
    assert_eq!(s.dom0().try_read("/vm/a").unwrap(), None);
    // The C daemon refuses to remove below a missing parent.
    assert!(!run(&s, "xenstore-rm", &["/nothing/here"]).status.success());
}

#[test]
fn chmod_sets_permissions_seen_by_ls_and_client() {
    let s = TestServer::start();
    ok(&s, "xenstore-write", &["/p/node", "v"]);
    ok(&s, "xenstore-chmod", &["/p/node", "n0", "r5"]);
    let want: Vec<Perm> = vec!["n0".parse().unwrap(), "r5".parse().unwrap()];
    assert_eq!(s.dom0().get_perms("/p/node").unwrap(), want);
    let ls = ok(&s, "xenstore-ls", &["-p", "/p"]);
    assert!(ls.contains("(n0,r5)"), "{ls}");
    ok(&s, "xenstore-chmod", &["-r", "/p", "b7"]);
    assert_eq!(
        s.dom0().get_perms("/p/node").unwrap(),
        vec!["b7".parse::<Perm>().unwrap()]
    );
}

#[test]
fn watch_tool_shows_initial_event_then_change() {
    let s = TestServer::start();
    let mut child = Command::new(tool_path("xenstore-watch"))
        .args(["-n", "2", "/w"])
        .env("XENSTORED_PATH", s.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(10);
    let first = rx.recv_timeout(wait);
    if first.is_err() {
        let _ = child.kill();
    }
    assert_eq!(first.unwrap(), "/w");
    s.dom0().write("/w/x", "1").unwrap();
    let second = rx.recv_timeout(wait);
    if second.is_err() {
        let _ = child.kill();
    }
    assert_eq!(second.unwrap(), "/w/x");
    assert!(child.wait().unwrap().success());
}

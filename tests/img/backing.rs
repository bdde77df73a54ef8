//! Backing files through the image tool: followed wherever they are, as qemu-img follows them
//! (the administrator runs it), but protocol names are refused with a clear message.

use crate::common::{at, qemu_ok, rustbk, rustbk_ok, tmp};

#[test]
fn image_tool_follows_backing_files_outside_the_image_folder() {
    let dir = tmp();
    std::fs::create_dir(at(&dir, "vm")).expect("mkdir");
    std::fs::create_dir(at(&dir, "bases")).expect("mkdir");
    std::fs::write(at(&dir, "bases/base.raw"), vec![0x3c; 1 << 20]).expect("write base");
    let top = at(&dir, "vm/top.qcow2");
    let name = "../bases/base.raw";
    qemu_ok(&[
        &"create", &"-q", &"-f", &"qcow2", &"-b", &name, &"-F", &"raw", &top,
    ]);
    let out = at(&dir, "out.raw");
    rustbk_ok(&[&"convert", &"-O", &"raw", &top, &out]);
    assert_eq!(std::fs::read(&out).expect("read"), vec![0x3c; 1 << 20]);
    rustbk_ok(&[&"compare", &top, &at(&dir, "bases/base.raw")]);
}

#[test]
fn image_tool_refuses_protocol_backing_names() {
    let dir = tmp();
    let top = at(&dir, "top.qcow2");
    let json = r#"json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}"#;
    qemu_ok(&[
        &"create", &"-q", &"-f", &"qcow2", &"-u", &"-b", &json, &"-F", &"raw", &top, &"1M",
    ]);
    let out = at(&dir, "out.raw");
    let runs = [
        rustbk(&[&"info", &"--backing-chain", &top]),
        rustbk(&[&"map", &top]),
        rustbk(&[&"convert", &"-O", &"raw", &top, &out]),
        rustbk(&[&"compare", &top, &top]),
        rustbk(&[&"bench", &"-c", &"1", &top]),
    ];
    for r in runs {
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("`json:` is a protocol name"), "{r:?}");
    }
}

//! Hostile backing file names: a tenant's image naming a host file is refused, one test per way
//! out of the allowed directories; allowed backing files still open.

use std::path::{Path, PathBuf};

use crate::image::{EngineKind, Format, OpenOptions};
use crate::qcow2::{CreateOptions, create};
use crate::suite::read_at;
use crate::{BackingPolicy, Error, open_image};

/// `root/vm` holds the tenant's images; `root/outside/secret.raw` is a host file.
struct Tree {
    _root: tempfile::TempDir,
    vm: PathBuf,
    outside: PathBuf,
    secret: PathBuf,
}

const SECRET: u8 = 0xee;

fn tree() -> Tree {
    let root = tempfile::tempdir().expect("tempdir");
    let vm = root.path().join("vm");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&vm).expect("mkdir vm");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    let secret = outside.join("secret.raw");
    std::fs::write(&secret, [SECRET; 65536]).expect("write secret");
    Tree {
        _root: root,
        vm,
        outside,
        secret,
    }
}

/// A qcow2 image at `path` whose header names `backing` (format `format`).
fn qcow2_naming(path: &Path, backing: &str, format: Format) -> PathBuf {
    let opts = CreateOptions {
        backing_file: Some(backing.into()),
        backing_format: Some(format),
        ..CreateOptions::default()
    };
    create(path, 1 << 20, &opts).expect("create");
    path.to_owned()
}

fn serving(dirs: Vec<PathBuf>) -> OpenOptions {
    OpenOptions {
        read_only: true,
        backing: BackingPolicy::Confined(dirs),
        ..OpenOptions::default()
    }
}

/// Opens `top` with `opts` and returns the refusal; panics if it opened or failed otherwise.
fn refusal(top: &Path, opts: &OpenOptions) -> (PathBuf, PathBuf, String) {
    match open_image(top, Format::Qcow2, opts) {
        Ok(_) => panic!("{} opened with its backing file", top.display()),
        Err(Error::BackingRefused { image, name, why }) => (image, name, why),
        Err(e) => panic!("{} failed otherwise: {e}", top.display()),
    }
}

fn first_byte(top: &Path, opts: &OpenOptions) -> u8 {
    let image = open_image(top, Format::Qcow2, opts).expect("open");
    let mut q = image.open_queue(2).expect("queue");
    read_at(&mut *q, 0, 512).expect("read")[0]
}

#[test]
fn absolute_backing_path_outside_the_image_folder_is_refused() {
    let t = tree();
    let name = t.secret.display().to_string();
    let top = qcow2_naming(&t.vm.join("top.qcow2"), &name, Format::Raw);
    let (image, named, why) = refusal(&top, &serving(Vec::new()));
    assert_eq!((image, named), (top, t.secret.clone()));
    assert!(
        why.contains("outside the allowed backing directories"),
        "{why}"
    );
}

#[test]
fn dotdot_backing_path_escaping_the_image_folder_is_refused() {
    let t = tree();
    let top = qcow2_naming(
        &t.vm.join("top.qcow2"),
        "../outside/secret.raw",
        Format::Raw,
    );
    let (_, _, why) = refusal(&top, &serving(Vec::new()));
    assert!(why.contains("secret.raw, outside"), "{why}");
}

#[test]
fn symlink_in_the_image_folder_leading_out_is_refused() {
    let t = tree();
    std::os::unix::fs::symlink(&t.secret, t.vm.join("base.raw")).expect("symlink");
    let top = qcow2_naming(&t.vm.join("top.qcow2"), "base.raw", Format::Raw);
    let (_, _, why) = refusal(&top, &serving(Vec::new()));
    assert!(why.contains("outside"), "{why}");
}

#[test]
fn device_node_backing_file_is_refused_even_inside_an_allowed_folder() {
    let t = tree();
    let top = qcow2_naming(&t.vm.join("top.qcow2"), "/dev/zero", Format::Raw);
    let (_, _, why) = refusal(&top, &serving(vec![t.vm.clone(), "/dev".into()]));
    assert!(
        why.contains("character device, not a regular file"),
        "{why}"
    );
    let (_, _, why) = refusal(&top, &serving(Vec::new()));
    assert!(why.contains("outside"), "{why}");
}

#[test]
fn json_and_protocol_backing_names_are_refused_even_by_the_image_tool() {
    let t = tree();
    let json = format!(
        r#"json:{{"file":{{"driver":"file","filename":"{}"}}}}"#,
        t.secret.display()
    );
    let tool = OpenOptions {
        backing: BackingPolicy::Follow,
        ..serving(Vec::new())
    };
    for (i, name) in [json.as_str(), "nbd:localhost:10809", "file:secret.raw"]
        .into_iter()
        .enumerate()
    {
        let top = qcow2_naming(&t.vm.join(format!("top{i}.qcow2")), name, Format::Raw);
        for opts in [&serving(Vec::new()), &tool] {
            let (_, named, why) = refusal(&top, opts);
            assert_eq!(named, Path::new(name));
            assert!(why.contains("protocol name"), "{why}");
        }
    }
}

#[test]
fn escape_from_a_backing_files_own_backing_file_is_refused() {
    let t = tree();
    let name = t.secret.display().to_string();
    let mid = qcow2_naming(&t.vm.join("mid.qcow2"), &name, Format::Raw);
    let top = qcow2_naming(&t.vm.join("top.qcow2"), "mid.qcow2", Format::Qcow2);
    let (image, _, why) = refusal(&top, &serving(Vec::new()));
    assert_eq!(
        image, mid,
        "the refusal names the image that names the host file"
    );
    assert!(why.contains("outside"), "{why}");
}

#[test]
fn opened_file_outside_the_allowed_folders_is_refused_whatever_path_led_to_it() {
    // A path swapped for a symlink after it was checked: what counts is the file opened.
    let t = tree();
    std::os::unix::fs::symlink(&t.secret, t.vm.join("swapped.raw")).expect("symlink");
    let opened = crate::EngineFile::open(
        &t.vm.join("swapped.raw"),
        crate::engine::Access::ReadOnly,
        crate::CacheMode::Writeback,
    )
    .expect("open");
    let policy = BackingPolicy::Confined(Vec::new());
    let confinement =
        crate::confine::Confinement::new(&policy, &t.vm.join("top.qcow2")).expect("rules");
    let named = crate::confine::Named {
        image: &t.vm.join("top.qcow2"),
        name: Path::new("swapped.raw"),
    };
    let e = confinement
        .check_opened(&named, &opened)
        .expect_err("outside");
    assert!(e.to_string().contains("outside"), "{e}");
}

#[test]
fn backing_files_in_the_image_folder_and_below_open_by_default() {
    let t = tree();
    std::fs::create_dir(t.vm.join("bases")).expect("mkdir");
    std::fs::write(t.vm.join("bases/base.raw"), [0x42; 65536]).expect("write base");
    let top = qcow2_naming(&t.vm.join("top.qcow2"), "bases/base.raw", Format::Raw);
    assert_eq!(first_byte(&top, &serving(Vec::new())), 0x42);
}

#[test]
fn configured_backing_dirs_replace_the_image_folder() {
    let t = tree();
    let name = t.secret.display().to_string();
    let top = qcow2_naming(&t.vm.join("top.qcow2"), &name, Format::Raw);
    assert_eq!(first_byte(&top, &serving(vec![t.outside.clone()])), SECRET);
    std::fs::write(t.vm.join("base.raw"), [0x42; 65536]).expect("write base");
    let local = qcow2_naming(&t.vm.join("local.qcow2"), "base.raw", Format::Raw);
    let (_, _, why) = refusal(&local, &serving(vec![t.outside.clone()]));
    assert!(why.contains("outside"), "{why}");
}

#[test]
fn image_tool_follows_backing_files_anywhere_like_qemu_img() {
    let t = tree();
    let top = qcow2_naming(
        &t.vm.join("top.qcow2"),
        "../outside/secret.raw",
        Format::Raw,
    );
    let tool = OpenOptions {
        read_only: true,
        engine: EngineKind::Auto,
        backing: BackingPolicy::Follow,
        ..OpenOptions::default()
    };
    assert_eq!(first_byte(&top, &tool), SECRET);
}

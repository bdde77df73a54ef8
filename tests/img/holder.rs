//! A qemu-io process holding an image open for writing, as a running QEMU would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustbk_formats::engine::lock::{LockMode, lock};

/// `qemu-io -f FORMAT -c 'sleep ...' IMAGE` in the background; killed when dropped.
pub struct QemuWriter {
    child: Child,
    image: PathBuf,
}

impl QemuWriter {
    /// Starts qemu-io on `image` read-write and waits until its write lock is visible.
    pub fn hold(image: &Path, format: &str) -> QemuWriter {
        let child = Command::new("qemu-io")
            .args(["-f", format, "-c", "sleep 600000"])
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io is required (Debian package qemu-utils)");
        let mut holder = QemuWriter {
            child,
            image: image.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holder.writing() {
            if let Ok(Some(status)) = holder.child.try_wait() {
                panic!("qemu-io on {} exited with {status}", image.display());
            }
            assert!(Instant::now() < deadline, "qemu-io took no write lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        holder
    }

    /// Whether some process holds the image with the write permission (lock byte 101).
    fn writing(&self) -> bool {
        let file = std::fs::File::open(&self.image).expect("open image");
        lock(file, &self.image, LockMode::Reader).is_err()
    }
}

impl Drop for QemuWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

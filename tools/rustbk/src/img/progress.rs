//! A progress indicator on stderr in qemu-img's style: `    (42.00/100%)`.

use std::io::{IsTerminal, Write};

/// Prints the percentage done, at most once per hundredth of a percent.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    shown: Option<u64>,
}

impl Progress {
    /// A progress indicator shown when `wanted` or when stderr is a terminal and `auto`.
    pub fn new(wanted: bool, auto: bool) -> Progress {
        Progress {
            enabled: wanted || (auto && std::io::stderr().is_terminal()),
            shown: None,
        }
    }

    /// Shows `done` out of `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let hundredths = if total == 0 {
            10_000
        } else {
            u64::try_from(u128::from(done.min(total)) * 10_000 / u128::from(total)).unwrap_or(0)
        };
        if self.shown == Some(hundredths) {
            return;
        }
        self.shown = Some(hundredths);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "    ({}.{:02}/100%)\r",
            hundredths / 100,
            hundredths % 100
        );
        let _ = err.flush();
    }

    /// Shows 100% and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.update(1, 1);
            eprintln!();
            self.enabled = false;
        }
    }
}

//! `rustbk emu guest`: an emulated guest running a workload through a blkfront-like frontend.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use rustbk_blkfront::workload::{self, Progress, Report, Workload};
use rustbk_blkfront::{FrameAlloc, Frontend, FrontendConfig};
use rustbk_grant::emu::{DomainConfig, EmuDomain};
use rustbk_ring::{Abi, DomId, PAGE_SIZE};
use rustbk_xenstored::XsClient;

use super::workload_from_args;
use crate::cli::{GuestArgs, ProtocolArg};

/// Guest RAM for a workload: the ring, one buffer and its indirect pages per request, slack.
fn ram_pages(w: &Workload) -> u32 {
    let per_req = u32::try_from(w.block_size.div_ceil(PAGE_SIZE)).unwrap_or(u32::MAX);
    let indirect = per_req.div_ceil(512);
    w.queue_depth
        .saturating_mul(per_req.saturating_add(indirect))
        .saturating_add(16 + 64)
}

/// Connects, runs the workload, closes, prints the report.
pub fn run(args: GuestArgs) -> anyhow::Result<ExitCode> {
    let w = workload_from_args(&args.workload, args.fresh)?;
    let pages = ram_pages(&w);
    let cfg = DomainConfig {
        domid: DomId(args.domid),
        ram_pages: pages,
        grant_entries: pages + 64,
    };
    let dom = Arc::new(
        EmuDomain::create(&args.emu_dir, cfg).context("cannot create the emulated guest")?,
    );
    let xs = XsClient::connect(&args.xenstore).with_context(|| {
        format!(
            "cannot reach the guest's xenstore socket {}",
            args.xenstore.display()
        )
    })?;
    let mut fcfg = FrontendConfig::new(DomId(args.domid), args.devid);
    fcfg.ring_order = args.ring_order;
    fcfg.persistent = !args.no_persistent;
    fcfg.queues = args.queues;
    fcfg.spin = std::time::Duration::from_micros(u64::from(args.spin_us));
    (fcfg.abi, fcfg.write_protocol) = match args.protocol {
        ProtocolArg::X86_64 => (Abi::X86_64, true),
        ProtocolArg::X86_32 => (Abi::X86_32, true),
        ProtocolArg::None => (Abi::X86_32, false),
    };
    let mut front = Frontend::connect(dom, xs, FrameAlloc::new(pages), fcfg)
        .context("handshake with the backend failed")?;
    let d = front.disk().clone();
    eprintln!(
        "guest {}: connected, {} bytes in {}-byte sectors, ring order {}, queues {}, flush {}, discard {}, indirect {}, persistent {}",
        args.domid,
        d.sectors.saturating_mul(512),
        d.sector_size,
        d.ring_order,
        d.queues,
        d.flush,
        d.discard,
        d.max_indirect_segments,
        d.persistent
    );
    let mut printer = ProgressPrinter::new();
    let report =
        workload::run(&mut front, &w, &mut |p| printer.show(p)).context("workload failed")?;
    printer.done();
    front.close().context("closing the device failed")?;
    print_report(&report, args.json)?;
    Ok(if report.mismatches == 0 && report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
    }
    Ok(())
}

/// Prints progress on stderr: one refreshed line on a terminal, a line per second otherwise.
struct ProgressPrinter {
    tty: bool,
}

impl ProgressPrinter {
    fn new() -> Self {
        ProgressPrinter {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, p: &Progress) {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        let line = format!(
            "[{:5.1}s] {:>10} ops {:>9.0} IOPS  {} mismatches  {} errors",
            p.elapsed.as_secs_f64(),
            p.ops,
            p.ops as f64 / secs,
            p.mismatches,
            p.errors
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

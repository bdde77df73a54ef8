#!/usr/bin/env bash
# The whole rustbk test suite, from a fresh Debian machine: installs the system packages the
# tests use (scripts/setup.sh: gcc/-m32 against Xen's headers, Debian's xenstore CLI, fio, one
# consistent QEMU set chosen by RUSTBK_QEMU), checks formatting and lints, runs every cargo
# test and the short soak (scripts/soak.sh), then boots real Xen with a Linux guest under QEMU
# and runs the end-to-end test (tests/xen-e2e: Xen 4.17 with the patched xl, then trixie's Xen
# 4.20 with its unpatched xl). A missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace 2>&1 | tee /tmp/rustbk-test.log
grep -q "test result: FAILED" /tmp/rustbk-test.log && exit 1
echo "== fuzz targets build (fuzz/ is its own package; running them needs cargo-fuzz and nightly)"
(cd fuzz && cargo check --bins --quiet)
echo "== libxl with backendtype=rustbk (tools/libxl: patched Xen 4.17 libxl/xl, cached build)"
bash tools/libxl/test.sh | tail -n 3
echo "== hotplug script under Xen 4.20's hotplug library (trixie's xen-utils-common), tap and vbd nodes"
bash tools/hotplug/test.sh
echo "== Debian package (cargo-deb): contents, conffile, unit, man pages"
bash tests/package/check.sh
echo "== soak, short setting (32 emulated guests under the daemon for 90 s with faults)"
bash scripts/soak.sh --short
echo "== real Xen end to end (Xen 4.17 + Linux dom0 + Linux PV guest under QEMU TCG, then Xen 4.20 with unpatched xl, backendtype=tap)"
bash tests/xen-e2e/run.sh
echo "== all tests passed"

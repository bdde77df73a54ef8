#!/usr/bin/env bash
# Builds rustbk's Debian package with cargo-deb: the release binary, man pages generated from
# the command-line definitions, the hotplug script, the systemd unit and /etc/rustbk/rustbk.toml.
# Prints the .deb's path on the last line. cargo-deb comes from scripts/setup.sh (a pinned
# version, built once into /var/cache/rustbk/cargo-deb/<version>).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${RUSTBK_CACHE:-/var/cache/rustbk}
CARGO_DEB_VERSION=3.8.0
CARGO_DEB=$CACHE/cargo-deb/$CARGO_DEB_VERSION/bin/cargo-deb
[ -x "$CARGO_DEB" ] || { echo "package: $CARGO_DEB is missing: run scripts/setup.sh" >&2; exit 1; }

cargo build --release -p rustbk
rm -rf target/release/man
target/release/rustbk man --out target/release/man >/dev/null
gzip -9n target/release/man/*.1
"$CARGO_DEB" -p rustbk --no-build --no-strip --output target/debian/ | tail -n 1

#!/usr/bin/env bash
# Builds rustbk's Debian package with cargo-deb: the release binary, man pages generated from
# the command-line definitions, the hotplug script, the systemd unit and /etc/rustbk/rustbk.toml.
# Prints the .deb's path on the last line; with inputs unchanged since the last build, it
# prints the existing one without packing again. cargo-deb comes from scripts/setup.sh (a pinned
# version, built once into /var/cache/rustbk/cargo-deb/<version>).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${RUSTBK_CACHE:-/var/cache/rustbk}
CARGO_DEB_VERSION=3.8.0
CARGO_DEB=$CACHE/cargo-deb/$CARGO_DEB_VERSION/bin/cargo-deb
[ -x "$CARGO_DEB" ] || { echo "package: $CARGO_DEB is missing: run scripts/setup.sh" >&2; exit 1; }

cargo build --release -p rustbk

# Everything the package is made of (the man pages come from the binary). The same inputs give
# the same package: a second caller in one run (tests/package/check.sh, then tests/xen-e2e)
# takes the .deb already built instead of packing it again (cargo-deb takes about 30 s).
inputs_key() {
  {
    echo "cargo-deb $CARGO_DEB_VERSION"
    sha256sum target/release/rustbk scripts/package.sh tools/rustbk/Cargo.toml README.md \
      tools/hotplug/rustbk tools/hotplug/README.md
    find packaging -type f -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}
key=$(inputs_key)
stamp=target/debian/.package-key
if [ "$(head -n 1 "$stamp" 2>/dev/null)" = "$key" ]; then
  deb=$(sed -n 2p "$stamp")
  if [ -f "$deb" ]; then
    echo "package: inputs unchanged, reusing $deb" >&2
    echo "$deb"
    exit 0
  fi
fi

rm -rf target/release/man
target/release/rustbk man --out target/release/man >/dev/null
gzip -9n target/release/man/*.1
deb=$("$CARGO_DEB" -p rustbk --no-build --no-strip --output target/debian/ | tail -n 1)
[ -f "$deb" ] || { echo "package: cargo-deb printed '$deb', not a .deb" >&2; exit 1; }
printf '%s\n%s\n' "$key" "$deb" >"$stamp"
echo "$deb"

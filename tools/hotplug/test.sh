#!/bin/bash
# Runs tools/hotplug/rustbk under Xen 4.20's own hotplug library (Debian trixie's
# xen-utils-common: xen-hotplug-common.sh, block-common.sh, ...) against rustbk's xenstore
# emulator, for the nodes libxl 4.20 writes: `backend/vbd3` with `params=aio:<target>` (xl's
# `backendtype=tap, script=rustbk`) and `backend/vbd`. Needs root (a private mount namespace
# gives Xen's library its /var/log/xen), xenstore-utils, qemu-img, and rustbk's trixie apt list
# from scripts/setup.sh ($RUSTBK_CACHE/apt/trixie). RUSTBK names the rustbk binary (default
# target/debug/rustbk). Prints one line per check and exits non-zero if any failed.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${RUSTBK_CACHE:-/var/cache/rustbk}
rustbk=${RUSTBK:-$root/target/debug/rustbk}
apt_dir=$cache/apt/trixie

die() { echo "test.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (unshare -m)"
[ -x "$rustbk" ] || die "no rustbk binary at $rustbk (cargo build -p rustbk)"
for t in xenstore-read xenstore-write xenstore-rm qemu-img unshare dpkg; do
  command -v "$t" >/dev/null || die "$t is missing"
done
[ -f "$apt_dir/sources.list" ] || die "no trixie apt list in $apt_dir: run scripts/setup.sh"

trixie_apt() {
  local tool=$1
  shift
  "$tool" -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" \
    -o Dir::State::status="$apt_dir/status" -o APT::Sandbox::User=root "$@"
}

version=$(trixie_apt apt-cache policy xen-utils-common | sed -n 's/^ *Candidate: //p')
case "$version" in 4.20.*) ;; *) die "trixie offers xen-utils-common '${version:-nothing}', not 4.20" ;; esac
deb_any=$(ls "$apt_dir"/debs/xen-utils-common_"${version/:/%3a}"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb_any" ]; then
  (cd "$apt_dir/debs" && trixie_apt apt-get -q download "xen-utils-common=$version" >/dev/null) ||
    die "apt-get download xen-utils-common=$version failed"
  deb_any=$(ls "$apt_dir"/debs/xen-utils-common_"${version/:/%3a}"_*.deb | head -n 1)
fi

work=$(mktemp -d)
xs_pid=
cleanup() {
  [ -n "$xs_pid" ] && kill "$xs_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
dpkg -x "$deb_any" "$work/pkg"
cp -r "$work/pkg/etc/xen/scripts" "$work/scripts"
cp "$here/rustbk" "$work/scripts/rustbk"
mkdir -p "$work/log/xen"
truncate -s 1M "$work/a.img"
qemu-img create -q -f qcow2 "$work/b.qcow2" 16M

"$rustbk" emu xenstored --socket "$work/xs.sock" 2>"$work/xenstored.log" &
xs_pid=$!
for _ in $(seq 50); do [ -S "$work/xs.sock" ] && break; sleep 0.1; done
[ -S "$work/xs.sock" ] || die "the xenstore emulator did not start"

echo "xen-utils-common $version"
export XENSTORED_PATH=$work/xs.sock WORK=$work
unshare -m bash "$here/test_cases.sh"

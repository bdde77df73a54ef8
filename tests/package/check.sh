#!/usr/bin/env bash
# Builds rustbk's Debian package (scripts/package.sh) and checks it the way an installer would
# meet it, without installing it on this machine: metadata and dependencies, every file in its
# place, the configuration file as a conffile that the packaged binary reads, the systemd unit
# (systemd-analyze verify) and its enable step, and man pages that render.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
  echo "package: FAIL: $*" >&2
  exit 1
}

deb=$(bash scripts/package.sh | tail -n 1)
[ -f "$deb" ] || fail "scripts/package.sh printed '$deb', not a .deb"
echo "package: $deb"

info=$(dpkg-deb -I "$deb")
grep -q '^ Package: rustbk$' <<<"$info" || fail "package name"
grep -q '^ Depends: .*libc6' <<<"$info" || fail "no libc6 dependency: $info"
grep -q '^ Depends: .*xenstore-utils' <<<"$info" || fail "no xenstore-utils dependency"
grep -q '^ License: GPL-3.0-only\|GPL-3.0-only' < <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/doc/rustbk/copyright) ||
  fail "copyright file does not name GPL-3.0-only"

files=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/sbin/rustbk ./etc/xen/scripts/rustbk ./etc/rustbk/rustbk.toml \
  ./usr/share/man/man1/rustbk.1.gz ./usr/share/man/man1/rustbk-daemon.1.gz \
  ./usr/share/man/man1/rustbk-ctl-stats.1.gz ./usr/share/doc/rustbk/README.md \
  ./usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.rustbk/SR.create \
  ./usr/libexec/xapi-storage-script/datapath/rustbk/Datapath.attach; do
  grep -qx "$f" <<<"$files" || fail "$f is not in the package"
done
unit=$(grep -E '^\./(usr/)?lib/systemd/system/rustbk\.service$' <<<"$files") || fail "no systemd unit"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -e "$deb" "$tmp/DEBIAN"
grep -qx /etc/rustbk/rustbk.toml "$tmp/DEBIAN/conffiles" || fail "rustbk.toml is not a conffile"
grep -q 'deb-systemd-helper .*rustbk.service' "$tmp/DEBIAN/postinst" || fail "postinst does not enable the unit"
if grep -q 'deb-systemd-invoke start' "$tmp/DEBIAN/postinst"; then
  fail "postinst starts the daemon (it needs Xen; the administrator starts it)"
fi

dpkg -x "$deb" "$tmp/root"
bin=$tmp/root/usr/sbin/rustbk
"$bin" --version | grep -q '^rustbk ' || fail "the packaged binary does not run"
# The shipped configuration parses: the daemon gets as far as xenstore, which is not there.
out=$(XENSTORED_PATH=$tmp/no-xenstore "$bin" daemon --config "$tmp/root/etc/rustbk/rustbk.toml" 2>&1) &&
  fail "the daemon ran without xenstore"
grep -q 'xenstore' <<<"$out" || fail "the daemon refused the shipped configuration: $out"
grep -q 'in the configuration' <<<"$out" && fail "the shipped configuration is invalid: $out"

# The unit, with ExecStart pointing into the unpacked tree so that systemd-analyze finds it.
sed "s|/usr/sbin/rustbk|$bin|" "$tmp/root/${unit#./}" >"$tmp/rustbk.service"
MANPATH=$tmp/root/usr/share/man systemd-analyze verify "$tmp/rustbk.service" 2>"$tmp/verify.err" ||
  fail "systemd-analyze verify: $(cat "$tmp/verify.err")"
if grep -v 'xenstored.service\|xen-init-dom0.service\|proc-xen.mount' "$tmp/verify.err" | grep -q .; then
  fail "systemd-analyze verify warns: $(cat "$tmp/verify.err")"
fi
grep -q '^KillMode=process$' "$tmp/rustbk.service" || fail "stopping the daemon would kill its workers"
grep -q '^RuntimeDirectoryPreserve=yes$' "$tmp/rustbk.service" || fail "/run/rustbk would go with the daemon"

for page in "$tmp"/root/usr/share/man/man1/*.1.gz; do
  MANWIDTH=80 man -l "$page" >/dev/null 2>"$tmp/man.err" || fail "man cannot render $page"
  [ -s "$tmp/man.err" ] && fail "man warns on $page: $(cat "$tmp/man.err")"
done
echo "package: ok ($(wc -l <<<"$files") paths, $(ls "$tmp"/root/usr/share/man/man1 | wc -l) man pages)"

#!/usr/bin/env bash
# Installs everything rustbk's tests use on a Debian bookworm machine, before any test runs, and
# fails with a clear message when it cannot. Idempotent: a second run installs nothing.
#
# QEMU comes as ONE consistent set: qemu-img/qemu-io (qemu-utils) and the qemu-system-x86_64 that
# boots Xen for tests/xen-e2e are always the same release. Which release is chosen by RUSTBK_QEMU:
#   backports (default)  QEMU 10.0 from bookworm-backports, what a new machine of this kind ships;
#   bookworm             QEMU 7.2 from bookworm itself.
# bookworm-backports is reached through a source list of rustbk's own (under /var/cache/rustbk),
# handed to apt-get for this install only: the system's sources are not touched.
set -euo pipefail

RUSTBK_QEMU=${RUSTBK_QEMU:-backports}
CACHE=${RUSTBK_CACHE:-/var/cache/rustbk}
# Peers and build tools: gcc/-m32 against Xen's headers, Debian's xenstore CLI, fio, loop devices,
# and the host side of tests/xen-e2e (kmod's depmod, mkfs.ext4, cpio).
PACKAGES=(libxen-dev gcc gcc-multilib xenstore-utils fio util-linux kmod e2fsprogs cpio)
QEMU_PACKAGES=(qemu-utils qemu-system-x86 qemu-system-common qemu-system-data)

say() { echo "== setup: $*"; }
die() {
  echo "setup: $*" >&2
  exit 1
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
UPDATED=""

apt_update() {
  [ -n "$UPDATED" ] && return 0
  $SUDO apt-get update -qq || die "apt-get update failed: are Debian's package mirrors reachable?"
  UPDATED=1
}

installed_version() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$1 == "install" && $3 == "installed" { print $4 }'
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    [ -n "$(installed_version "$p")" ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "installing ${missing[*]}"
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

# The upstream QEMU version a tool reports ("10.0.2"), or nothing.
tool_version() {
  command -v "$1" >/dev/null || return 0
  "$1" --version 2>/dev/null | sed -n 's/.* version \([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# Whether the installed QEMU packages all come from the chosen release.
qemu_matches() {
  local p v
  for p in "${QEMU_PACKAGES[@]}"; do
    v=$(installed_version "$p")
    [ -n "$v" ] || return 1
    case "$RUSTBK_QEMU:$v" in
      backports:*~bpo12*) ;;
      bookworm:*~bpo*) return 1 ;;
      bookworm:*) ;;
      *) return 1 ;;
    esac
  done
  return 0
}

backports_sources() {
  local list=$CACHE/apt/backports.list
  $SUDO mkdir -p "$CACHE/apt"
  $SUDO tee "$list" >/dev/null <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
EOF
  echo "-o Dir::Etc::SourceList=$list -o Dir::Etc::SourceParts=$CACHE/apt/none"
}

install_qemu() {
  qemu_matches && return 0
  say "installing QEMU from $RUSTBK_QEMU: ${QEMU_PACKAGES[*]}"
  local opts
  case "$RUSTBK_QEMU" in
    backports)
      opts=$(backports_sources)
      # shellcheck disable=SC2086
      $SUDO apt-get $opts update -qq || die "apt-get update with bookworm-backports failed"
      # shellcheck disable=SC2086
      $SUDO apt-get $opts install -y -qq --no-install-recommends --allow-downgrades \
        -t bookworm-backports "${QEMU_PACKAGES[@]}" >/dev/null ||
        die "cannot install QEMU 10 from bookworm-backports (${QEMU_PACKAGES[*]})"
      ;;
    bookworm)
      apt_update
      $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
        "${QEMU_PACKAGES[@]/%//bookworm}" >/dev/null ||
        die "cannot install QEMU 7.2 from bookworm (${QEMU_PACKAGES[*]})"
      ;;
    *) die "RUSTBK_QEMU must be backports or bookworm, not '$RUSTBK_QEMU'" ;;
  esac
  qemu_matches || die "QEMU packages are not all from $RUSTBK_QEMU after the install: $(qemu_versions)"
}

qemu_versions() {
  local p
  for p in "${QEMU_PACKAGES[@]}"; do printf '%s=%s ' "$p" "$(installed_version "$p")"; done
}

check_qemu_tools() {
  local img io sys
  img=$(tool_version qemu-img)
  io=$(tool_version qemu-io)
  sys=$(tool_version qemu-system-x86_64)
  [ -n "$img" ] && [ -n "$io" ] && [ -n "$sys" ] ||
    die "qemu-img, qemu-io or qemu-system-x86_64 is missing after the install: $(qemu_versions)"
  [ "$img" = "$sys" ] && [ "$io" = "$sys" ] ||
    die "QEMU tools disagree: qemu-img $img, qemu-io $io, qemu-system-x86_64 $sys"
  say "QEMU $img ($RUSTBK_QEMU)"
}

install_packages
install_qemu
check_qemu_tools

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
# the host side of tests/xen-e2e (kmod's depmod, mkfs.ext4, cpio), thin-provisioning-tools
# 0.9 (C++, /usr/sbin/thin_check ...) for the thin pool's interop tests, and util-linux-extra's
# fincore (what a file keeps in the page cache) for the thin pool's tests.
PACKAGES=(libxen-dev gcc gcc-multilib xenstore-utils fio util-linux util-linux-extra kmod e2fsprogs
  cpio systemd man-db thin-provisioning-tools)
# libyal's independent VHD reader (differencing chains, which qemu cannot read).
PACKAGES+=(python3-libvhdi libvhdi-utils)
# libyal's independent VMDK reader (python3 module pyvmdk, vmdkinfo) for the vmdk interop tests.
PACKAGES+=(python3-libvmdk libvmdk-utils)
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

# thin-provisioning-tools 1.1 (the Rust rewrite) is trixie's; it is unpacked next to bookworm's
# 0.9 rather than installed, so both peers are there for the thin pool's tests:
#   $CACHE/thin-tools/<debian version>/root   the package's files (dpkg -x)
#   $CACHE/thin-tools/<debian version>/bin    thin_check, thin_dump, thin_restore, thin_ls,
#                                             thin_delta, thin_repair: symlinks to pdata_tools
#   $CACHE/thin-tools/current                 a symlink to that bin directory; the tests use it
# trixie is reached through a source list (the system's bookworm mirror, suite trixie), package
# lists, cache and an EMPTY dpkg status of rustbk's own under $CACHE/apt/trixie: the system's
# sources, lists and packages are untouched.
# What was found (December 2026): trixie ships 1.1.0-4+b1; its pdata_tools needs GLIBC_2.34 at
# most (objdump -T) and links only libc, libm, libgcc_s and libudev, all in bookworm (glibc 2.36),
# so the Debian binary runs here as it is and no source build is needed. Should a later trixie
# build need a newer glibc, `thin_check -V` fails below and so does the set-up, saying so.
THIN_TOOLS=(thin_check thin_dump thin_restore thin_ls thin_delta thin_repair)

check_thin_tools_09() {
  local v
  v=$(/usr/sbin/thin_check -V 2>/dev/null) || die "/usr/sbin/thin_check (thin-provisioning-tools) does not run"
  case "$v" in
    0.9.*) say "thin-provisioning-tools $v (bookworm) in /usr/sbin" ;;
    *) die "/usr/sbin/thin_check is version '$v', not bookworm's 0.9" ;;
  esac
}

# Whether $1 holds all THIN_TOOLS and its thin_check reports 1.1.
thin_tools_11_ready() {
  local t v
  for t in "${THIN_TOOLS[@]}"; do [ -x "$1/$t" ] || return 1; done
  v=$("$1/thin_check" -V 2>/dev/null) || return 1
  case "$v" in 1.1.*) return 0 ;; *) return 1 ;; esac
}

# Runs apt-get or apt-cache ($1) on rustbk's trixie list only.
trixie_apt() {
  local tool=$1 d=$CACHE/apt/trixie
  shift
  $SUDO "$tool" -o Dir::Etc::SourceList="$d/sources.list" \
    -o Dir::Etc::SourceParts="$CACHE/apt/none" -o Dir::State::Lists="$d/lists" \
    -o Dir::Cache="$d/cache" -o Dir::State::status="$d/status" -o APT::Sandbox::User=root "$@"
}

fetch_thin_tools_11() {
  local d=$CACHE/apt/trixie mirror version dir deb tmp t
  $SUDO mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs"
  # trixie from the mirror this machine's own sources use for bookworm.
  # shellcheck disable=SC2016 # $(REPO_URI) is apt's field, not a command.
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 'Release: bookworm' |
    head -n 1)
  [ -n "$mirror" ] || die "no Debian mirror for bookworm in this machine's apt sources to take trixie from"
  echo "deb $mirror trixie main" | $SUDO tee "$d/sources.list" >/dev/null
  [ -f "$d/status" ] || $SUDO touch "$d/status"
  trixie_apt apt-get update -qq >/dev/null || die "apt-get update with rustbk's trixie list failed"
  version=$(trixie_apt apt-cache policy thin-provisioning-tools | sed -n 's/^ *Candidate: //p')
  case "$version" in
    1.1.*) ;;
    *) die "trixie offers thin-provisioning-tools '${version:-nothing}', not 1.1" ;;
  esac
  dir=$CACHE/thin-tools/$version
  if ! thin_tools_11_ready "$dir/bin"; then
    say "unpacking thin-provisioning-tools $version from trixie into $dir"
    deb=$d/debs/thin-provisioning-tools_${version/:/%3a}_$(dpkg --print-architecture).deb
    [ -f "$deb" ] || (cd "$d/debs" && trixie_apt apt-get -q download "thin-provisioning-tools=$version" >/dev/null) ||
      die "apt-get download thin-provisioning-tools=$version from trixie failed"
    tmp=$($SUDO mktemp -d "$CACHE/thin-tools/.unpack.XXXXXX")
    $SUDO chmod 755 "$tmp"
    $SUDO dpkg -x "$deb" "$tmp/root" ||
      die "dpkg -x of thin-provisioning-tools $version failed"
    $SUDO mkdir "$tmp/bin"
    for t in "${THIN_TOOLS[@]}"; do $SUDO ln -s ../root/usr/sbin/pdata_tools "$tmp/bin/$t"; done
    $SUDO rm -rf "$dir"
    $SUDO mv "$tmp" "$dir"
  fi
  thin_tools_11_ready "$dir/bin" ||
    die "thin-provisioning-tools $version from trixie does not run here: $("$dir/bin/thin_check" -V 2>&1 | head -n 3)"
  $SUDO ln -sfn "$version/bin" "$CACHE/thin-tools/current"
}

install_thin_tools_11() {
  $SUDO mkdir -p "$CACHE/thin-tools"
  thin_tools_11_ready "$CACHE/thin-tools/current" || fetch_thin_tools_11
  say "thin-provisioning-tools $("$CACHE/thin-tools/current/thin_check" -V) (trixie) in $(readlink -f "$CACHE/thin-tools/current")"
}

# cargo-deb builds the Debian package (scripts/package.sh): a pinned version, built once into
# $CACHE/cargo-deb/<version> (about 5 minutes), never into the repository or ~/.cargo.
CARGO_DEB_VERSION=3.8.0

install_cargo_deb() {
  local root=$CACHE/cargo-deb/$CARGO_DEB_VERSION
  if [ ! -x "$root/bin/cargo-deb" ]; then
    say "building cargo-deb $CARGO_DEB_VERSION into $root"
    $SUDO mkdir -p "$CACHE/cargo-deb"
    $SUDO rm -rf "$root.tmp"
    $SUDO cargo install --quiet --locked --version "$CARGO_DEB_VERSION" --root "$root.tmp" cargo-deb ||
      die "cargo install cargo-deb $CARGO_DEB_VERSION failed: is crates.io reachable?"
    $SUDO rm -rf "$root"
    $SUDO mv "$root.tmp" "$root"
  fi
  "$root/bin/cargo-deb" --version >/dev/null || die "$root/bin/cargo-deb does not run"
  say "$("$root/bin/cargo-deb" --version) in $root"
}

install_packages
install_cargo_deb
install_qemu
check_qemu_tools
check_thin_tools_09
install_thin_tools_11

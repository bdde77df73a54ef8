#!/usr/bin/env bash
# Builds Debian's libxl, libxlutil and xl with rustbk's patch series (tools/libxl/patches-4.17)
# into a cache outside the repository, and prints the cache directory:
#
#   $RUSTBK_CACHE/xen-tools/<debian source version>-<series hash>/
#     src/       the patched, built source tree (the test compiles against it)
#     root/      `make install` of tools/libs and tools/xl: usr/sbin/xl, usr/lib/<triplet>/libxen*
#     complete   written last: a directory without it is a broken build and is redone
#
# The series hash covers the series file, every patch in it and RECIPE below, so changing a
# patch builds anew, and a repeat run with nothing changed only looks the directory up.
#
# The source comes from `apt-get source xen` through a source list of rustbk's own
# ($RUSTBK_CACHE/apt/xen-src: bookworm and bookworm-security, deb and deb-src, with its own
# package lists); the system's sources and lists are not touched. The newest source version
# that can be downloaded is used (the mirror may list a security version whose files it does
# not serve); XEN_SOURCE_VERSION=<debian version> pins one. Build dependencies are installed as
# explicit packages (apt-get build-dep would pull OCaml, Go, pandoc and firmware tool chains
# that libxl and xl do not need).
#
# Usage: tools/libxl/build.sh      build if needed; print the cache directory on stdout
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PATCHES=$HERE/patches-4.17
CACHE=${RUSTBK_CACHE:-/var/cache/rustbk}
APT_DIR=$CACHE/apt/xen-src
TOOLS_DIR=$CACHE/xen-tools
# Bump when the configure options or the make targets below change: it is part of the key.
RECIPE=3
BUILD_DEPS=(dpkg-dev quilt autoconf autotools-dev flex bison acpica-tools python3 pkg-config gcc make
  libyajl-dev uuid-dev zlib1g-dev libzstd-dev liblzma-dev libncurses-dev)
# Only what libxl and xl need; the hypervisor, firmware, QEMU and the other tools stay out.
# The paths libxl compiles in are Debian's (debian/rules' configure line), so that the patched
# xl and libxenlight can replace the package's files: helpers and firmware under
# /usr/lib/xen-<major.minor>/ (libxl-save-helper, pygrub's path, hvmloader), Debian's SeaBIOS
# and OVMF, QEMU at /usr/libexec/xen-qemu-system-i386.
CONFIGURE_OPTS=(--prefix=/usr --libdir=/usr/lib/x86_64-linux-gnu --sysconfdir=/etc
  --localstatedir=/var --with-libexec-libdir-suffix=/x86_64-linux-gnu
  --disable-monitors --disable-ocamltools --disable-xsmpolicy
  --disable-golang --disable-qemu-traditional --disable-rombios
  --disable-pvshim --with-system-qemu=/usr/libexec/xen-qemu-system-i386
  --with-system-seabios=/usr/share/seabios/bios-256k.bin
  --with-system-ovmf=/usr/share/ovmf/OVMF.fd --with-xenstored=xenstored)
MAKE_DIRS=(tools/include tools/libs tools/xl)

say() { echo "== libxl build: $*" >&2; }
die() {
  echo "libxl build: $*" >&2
  exit 1
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_opts() {
  echo "-o Dir::Etc::SourceList=$APT_DIR/sources.list -o Dir::Etc::SourceParts=$APT_DIR/none" \
    "-o Dir::State::Lists=$APT_DIR/lists"
}

# A private source list with deb-src lines, and its package lists (refreshed once a day).
apt_setup() {
  $SUDO mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/none"
  $SUDO tee "$APT_DIR/sources.list" >/dev/null <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
  if [ -z "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Sources*' -mmin -1440 2>/dev/null)" ]; then
    say "apt-get update ($APT_DIR)"
    # shellcheck disable=SC2046
    $SUDO apt-get $(apt_opts) update -qq || die "apt-get update with $APT_DIR failed"
  fi
}

# Source versions of xen the lists offer, newest first.
source_versions() {
  # shellcheck disable=SC2046
  apt-cache $(apt_opts) showsrc xen | sed -n 's/^Version: //p' | sort -u |
    sort -r -V
}

series_hash() {
  {
    echo "recipe $RECIPE"
    cat "$PATCHES/series"
    while read -r p; do
      [ -n "$p" ] && cat "$PATCHES/$p"
    done <"$PATCHES/series"
  } | sha256sum | cut -c1-12
}

install_deps() {
  local missing=() p
  for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
      missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "installing ${missing[*]}"
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get $(apt_opts) install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null || die "cannot install ${missing[*]}"
}

# Downloads and unpacks source version $1 (with Debian's patches) into $2/src.
get_source() {
  local version=$1 out=$2 dl=$2/download
  mkdir -p "$dl"
  # shellcheck disable=SC2046
  (cd "$dl" && apt-get $(apt_opts) source --download-only "xen=$version" >/dev/null 2>&1) ||
    return 1
  # (dpkg-source warns that it cannot check the .dsc's signature without debian-keyring; apt
  # has checked the files' hashes against the signed Sources index.)
  dpkg-source -x "$dl"/xen_*.dsc "$out/src" >"$out/unpack.log" 2>&1 ||
    die "dpkg-source -x failed: see $out/unpack.log"
  rm -rf "$dl" "$out"/xen_*.orig.tar.*
}

apply_series() {
  local src=$1 p
  while read -r p; do
    [ -n "$p" ] || continue
    say "applying $p"
    patch -d "$src" -p1 -s --no-backup-if-mismatch <"$PATCHES/$p" || die "$p does not apply"
  done <"$PATCHES/series"
}

# The Debian source has no generated configure: make it, as dh_autoreconf would. The top-level
# configure writes config/Paths.mk (the install paths) and runs tools/configure.
configure_tree() {
  local src=$1
  cp /usr/share/misc/config.sub /usr/share/misc/config.guess "$src/"
  (cd "$src" && autoconf -f && cd tools && autoconf -f && autoheader -f) >/dev/null 2>&1 ||
    die "autoconf failed"
  # Debian's leaf: xen-<major.minor> (debian/rules: --with-libexec-leaf-dir=xen-$(upstream_version)).
  local series
  series=$(cd "$src" && ./version.sh ./xen/Makefile) || die "cannot read the Xen version"
  (cd "$src" && ./configure --disable-xen --disable-docs --disable-stubdom \
    --with-libexec-leaf-dir="xen-$series" "${CONFIGURE_OPTS[@]}") >"$src/../configure.log" 2>&1 ||
    die "configure failed: see $src/../configure.log"
}

make_tree() {
  local src=$1 root=$2 d
  for d in "${MAKE_DIRS[@]}"; do
    say "make -C $d"
    nice -n 10 make -j"$(nproc)" -C "$src/$d" >>"$src/../make.log" 2>&1 ||
      die "make -C $d failed: see $src/../make.log"
  done
  for d in tools/libs tools/xl; do
    nice -n 10 make -C "$src/$d" install DESTDIR="$root" >>"$src/../make.log" 2>&1 ||
      die "make -C $d install failed: see $src/../make.log"
  done
}

# Builds version $1 into $2; fails (1) only if the source cannot be downloaded.
build() {
  local version=$1 out=$2
  rm -rf "$out"
  mkdir -p "$out"
  say "building xen $version with $(wc -l <"$PATCHES/series") patches in $out"
  get_source "$version" "$out" || {
    rm -rf "$out"
    return 1
  }
  apply_series "$out/src"
  configure_tree "$out/src"
  make_tree "$out/src" "$out/root"
  [ -x "$out/root/usr/sbin/xl" ] || die "no xl in $out/root after the build"
  date -u +%FT%TZ >"$out/complete"
}

main() {
  local hash version out
  hash=$(series_hash)
  apt_setup
  local versions=()
  if [ -n "${XEN_SOURCE_VERSION:-}" ]; then
    versions=("$XEN_SOURCE_VERSION")
  else
    mapfile -t versions < <(source_versions)
  fi
  [ "${#versions[@]}" -gt 0 ] || die "no xen source package in $APT_DIR's lists"
  for version in "${versions[@]}"; do
    out=$TOOLS_DIR/$version-$hash
    if [ -f "$out/complete" ]; then
      say "cached: $out"
      echo "$out"
      return 0
    fi
  done
  install_deps
  for version in "${versions[@]}"; do
    out=$TOOLS_DIR/$version-$hash
    if build "$version" "$out"; then
      echo "$out"
      return 0
    fi
    say "cannot download the source of xen $version; trying an older one"
  done
  die "could not download any xen source (${versions[*]})"
}

main "$@"

# Host side of the tap420 boot (sourced by run.sh): Debian trixie's Xen 4.20 with trixie's own,
# unpatched xl, its libraries, kernel and glibc, and rustbk from the same Debian package as the
# 4.17 boot, serving `backendtype=tap, script=rustbk` disks (libxl's `backend/vbd3` nodes).
# dom0's side is dom0-tap420.sh.
#
# trixie is reached through a source list, package lists, cache and an empty dpkg status of
# this test's own under $TAP420_CACHE/apt (the system's sources, lists and packages are
# untouched; the host's apt stays bookworm). The .debs are kept in $TAP420_CACHE/debs/<key>,
# where <key> is the hash of the exact files apt would fetch (names and versions), so a repeat
# run downloads nothing; a new trixie point release gives a new key.

TAP420_CACHE=${RUSTBK_CACHE:-/var/cache/rustbk}/xen420
TAP420_TIMEOUT=${TAP420_TIMEOUT:-900}   # seconds for the whole tap420 boot (about 100 used)
R420=$W/root420
# Xen 4.20 and its tools, trixie's glibc and the libraries of xl, xenstored, xenconsoled,
# qemu-img (to check the qcow2 image in dom0), bash (the hotplug scripts) and flock (their
# locking); the kernel (linux-image-<version>) is added by fetch_trixie.
TAP420_PKGS="xen-hypervisor-4.20-amd64 xen-utils-4.20 xen-utils-common libxenmisc4.20 libxenstore4
  libxengnttab1 libxenevtchn1 libxentoollog1 libxencall1 libxenforeignmemory1 libxendevicemodel1
  libxentoolcore1 libxenhypfs1 xenstore-utils libyajl2 busybox-static libc6 libgcc-s1 libtinfo6
  libncurses6 libext2fs2t64 liblzma5 libuuid1 libzstd1 zlib1g bash util-linux qemu-utils
  libaio1t64 libfuse3-4 libglib2.0-0t64 libgmp10 libgnutls30t64 libhogweed6t64 libnettle8t64
  libnuma1 libselinux1 liburing2 libatomic1 libffi8 libmount1 libblkid1 libpcre2-8-0 libidn2-0
  libp11-kit0 libtasn1-6 libunistring5"
# The ELF files dom0 runs from the trixie packages, besides /usr/lib/xen-4.20/bin/*.
TAP420_BINS="usr/bin/xenstore usr/bin/qemu-img usr/bin/bash usr/bin/flock"

# Runs apt-get or apt-cache ($1) on this test's trixie list only.
trixie420_apt() {
  local tool=$1 d=$TAP420_CACHE/apt
  shift
  "$tool" -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts="$d/none" \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::status="$d/status" \
    -o APT::Sandbox::User=root "$@"
}

# The trixie list (the mirror this machine uses for bookworm, suite trixie), refreshed when
# older than a day; if the refresh fails, lists already there are used (and saying so).
trixie420_list() {
  local d=$TAP420_CACHE/apt mirror
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/none" || die "cannot create $d"
  # shellcheck disable=SC2016 # $(REPO_URI) is apt's field, not a command.
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 'Release: bookworm' | head -n 1)
  [ -n "$mirror" ] || die "no Debian mirror for bookworm in this machine's apt sources to take trixie from"
  echo "deb $mirror trixie main" > "$d/sources.list"
  [ -f "$d/status" ] || : > "$d/status"
  if [ -z "$(find "$d/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null)" ]; then
    if ! trixie420_apt apt-get update -qq > "$W/tap420-apt.log" 2>&1; then
      cat "$W/tap420-apt.log"
      [ -n "$(find "$d/lists" -maxdepth 1 -name '*_Packages*')" ] || die "apt-get update of the trixie list failed"
      log "apt-get update of the trixie list failed: using the lists of an earlier update"
    fi
  fi
}

# Downloads the packages once per key into $TAP420_CACHE/debs/<key> and unpacks them into $R420
# (again only when the key changed). Sets KVER420.
fetch_trixie() {
  local pkgs uris key debs d
  trixie420_list
  KVER420=$(trixie420_apt apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1)
  [ -n "$KVER420" ] || die "cannot find the kernel version of trixie's linux-image-amd64"
  pkgs="$TAP420_PKGS linux-image-$KVER420"
  # shellcheck disable=SC2086 # one word per package
  uris=$(trixie420_apt apt-get download --print-uris $pkgs) || die "apt-get download --print-uris failed"
  case "$uris" in *xen-utils-4.20_4.20.*) ;; *) die "trixie's list offers no xen-utils-4.20 4.20.x" ;; esac
  key=$(echo "$uris" | awk '{print $2}' | sort | sha256sum | cut -c1-16)
  debs=$TAP420_CACHE/debs/$key
  if [ ! -f "$debs/complete" ]; then
    log "downloading trixie's packages into $debs"
    rm -rf "$debs" && mkdir -p "$debs" || die "cannot create $debs"
    # shellcheck disable=SC2086
    (cd "$debs" && trixie420_apt apt-get -q download $pkgs) > "$W/tap420-download.log" 2>&1 \
      || { tail -n 20 "$W/tap420-download.log"; die "apt-get download from trixie failed"; }
    echo "$pkgs" > "$debs/complete"
  else
    log "trixie's packages from the cache $debs (nothing downloaded)"
  fi
  if [ "$(cat "$R420/.done" 2>/dev/null)" != "$key" ]; then
    rm -rf "$R420" && mkdir -p "$R420/lib" || die "cannot create $R420"
    for d in "$debs"/*.deb; do dpkg -x "$d" "$R420" || die "dpkg -x $d"; done
    ln -s ../usr/lib/modules "$R420/lib/modules"
    depmod -b "$R420" "$KVER420" || die "depmod of trixie's kernel modules"
    echo "$key" > "$R420/.done"
  fi
  [ -f "$R420/boot/vmlinuz-$KVER420" ] && [ -f "$R420/boot/xen-4.20-amd64.gz" ] \
    || die "trixie's kernel or Xen 4.20 missing from the packages"
  zcat "$R420/boot/xen-4.20-amd64.gz" > "$W/xen420.elf" || die "zcat xen-4.20-amd64.gz"
  XEN420_VERSION=$(dpkg-deb -f "$(ls "$debs"/xen-utils-4.20_*.deb)" Version)
}

# copy_mods420 IR MODULE...: trixie's modules (their names without .ko.xz) and what they need,
# decompressed (busybox's modprobe need not read xz), and a modules.dep for them.
copy_mods420() {
  local ir=$1 m f deps src=$R420/usr/lib/modules/$KVER420 dst=$1/lib/modules/$KVER420
  shift
  mkdir -p "$dst" && cp "$src"/modules.builtin* "$src"/modules.order "$dst/" || die "modules.builtin of $KVER420"
  for m in "$@"; do
    deps=$(grep "^kernel/.*/$m.ko.xz:" "$src/modules.dep" | tr -d ':')
    [ -n "$deps" ] || die "trixie's kernel has no module $m"
    for f in $deps; do
      mkdir -p "$dst/$(dirname "$f")" && xz -dc "$src/$f" > "$dst/${f%.xz}" || die "xz -d $f"
    done
  done
  depmod -b "$ir" "$KVER420" || die "depmod of the modules in $ir"
}

# ld_check IR FILE...: every library FILE needs is in IR's /usr/lib/x86_64-linux-gnu (trixie's)
# with the symbol versions it asks for, as trixie's own ld.so resolves them.
ld_check() {
  local ir=$1 f out
  shift
  for f in "$@"; do
    out=$("$ir/usr/lib64/ld-linux-x86-64.so.2" --library-path "$ir/usr/lib/x86_64-linux-gnu" --list "$ir/$f" 2>&1) \
      || die "trixie's ld.so cannot load /$f: $out"
    ! echo "$out" | grep -E 'not found|=> /(usr/)?lib' || die "/$f needs a library trixie's packages lack"
  done
}

# The guest: busybox and domU-init.sh (its RUSTBK-E2E-HOT disks: a marker, 1 MiB written and
# read back after dropping the page cache) on trixie's kernel, and bookworm's fio with its
# libraries (copy_bin, as in the 4.17 guest) for the RUSTBK-E2E-VERIFY disk.
build_tap420_guest_ir() {
  local ir=$W/domU420-ir
  rm -rf "$ir" && mkdir -p "$ir"/{bin,sbin,proc,sys,dev,mnt,tmp,lib}
  cp "$R420/usr/bin/busybox" "$ir/bin/" && cp "$SRC/domU-init.sh" "$ir/init" && chmod +x "$ir/init"
  copy_bin "$ir" /usr/bin/fio
  copy_mods420 "$ir" xen-blkfront ext4 crc32c_generic
  (cd "$ir" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$W/domU420.cpio.gz") || die "guest initramfs (tap420)"
}

# dom0: trixie's files only (usr merged, as trixie is), busybox for the shell tools, rustbk from
# its package. /usr/sbin/xl is trixie's unpatched xl.
build_tap420_dom0_ir() {
  local ir=$W/dom0-420-ir x=usr/lib/xen-4.20/bin f t
  rm -rf "$ir" && mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,usr/lib,proc,sys,dev,etc/e2e,etc/xen,boot,root}
  ln -s usr/lib "$ir/lib" && ln -s usr/lib64 "$ir/lib64"
  cp -a "$R420/usr/lib/x86_64-linux-gnu" "$R420/usr/lib/xen-4.20" "$ir/usr/lib/" || die "trixie's libraries"
  cp -a "$R420/usr/lib64" "$ir/usr/" || die "trixie's ld.so"
  cp "$R420/usr/bin/busybox" "$ir/bin/" && cp "$SRC/dom0-init.sh" "$ir/init" && chmod +x "$ir/init"
  cp "$SRC/dom0-lib.sh" "$ir/etc/e2e/lib.sh" && cp "$SRC/dom0-tap420.sh" "$ir/etc/e2e/tap420.sh"
  for f in $TAP420_BINS; do cp -L "$R420/$f" "$ir/$f" || die "no /$f in trixie's packages"; done
  for t in chmod exists list ls read rm watch write; do ln -sf xenstore "$ir/usr/bin/xenstore-$t"; done
  ln -s /$x/xl "$ir/usr/sbin/xl" && ln -s /usr/bin/bash "$ir/bin/bash"
  cp -a "$R420/etc/xen/scripts" "$R420/etc/xen/xl.conf" "$ir/etc/xen/"
  dpkg -x "$DEB" "$ir" || die "dpkg -x $DEB into the trixie dom0 image"
  chmod 0755 "$ir"
  [ -x "$ir/usr/sbin/rustbk" ] || die "rustbk's package did not install /usr/sbin/rustbk"
  ld_check "$ir" usr/sbin/rustbk $TAP420_BINS $x/xl $x/xenstored $x/xenconsoled $x/xen-init-dom0 \
    $x/libxl-save-helper $x/xenconsole
  echo "$XEN420_VERSION" > "$ir/etc/e2e/xen-version"
  echo "root:x:0:0:root:/root:/bin/sh" > "$ir/etc/passwd"
  copy_mods420 "$ir" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop virtio_blk ext4 crc32c_generic
  cp "$R420/boot/vmlinuz-$KVER420" "$ir/boot/domU-vmlinuz" && cp "$W/domU420.cpio.gz" "$ir/boot/domU.cpio.gz"
  (cd "$ir" && find . | cpio -o -H newc 2>/dev/null > "$W/dom0-420.cpio") || die "dom0 initramfs (tap420)"
  log "tap420: dom0 initramfs $(du -h "$W/dom0-420.cpio" | cut -f1) (trixie, xen-utils-4.20 $XEN420_VERSION, kernel $KVER420)"
}

# The whole tap420 boot: one 1-vCPU guest, its serial log in $W/serial-tap420.log.
run_tap420() {
  local t0 t vcpus=$GUEST_VCPUS jobs=$FIO_JOBS
  t0=$(date +%s)
  for t in depmod xz cpio gzip zcat dpkg-deb apt-get qemu-system-x86_64 mkfs.ext4; do
    command -v $t > /dev/null || die "tap420 needs $t on the host"
  done
  log "tap420: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  fetch_trixie
  build_tap420_guest_ir
  build_tap420_dom0_ir
  make_data_disk "$W/dom0-data420.img" 256
  local timeout=$XEN_TIMEOUT
  GUEST_VCPUS=1 FIO_JOBS=1 XEN_TIMEOUT=$TAP420_TIMEOUT
  boot_xen "$W/serial-tap420.log" "$W/xen420.elf" "$R420/boot/vmlinuz-$KVER420" "$W/dom0-420.cpio" tap420
  GUEST_VCPUS=$vcpus FIO_JOBS=$jobs XEN_TIMEOUT=$timeout
  log "tap420 boot: $(( $(date +%s) - t0 ))s from fetching trixie's packages to dom0's poweroff; load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

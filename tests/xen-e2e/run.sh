#!/bin/bash
# rustbk end-to-end test under real Xen: boots Debian's Xen 4.17 + a Linux dom0 running
# `rustbk daemon` + a Linux PV guest under qemu-system-x86_64 -accel tcg, and checks the guest's
# disk I/O through rustbk (data, ext4, hot attach/detach, 4096-byte sectors, reboot). rustbk is
# installed in dom0 from its Debian package (dpkg -x), and xl, libxenlight and libxlutil are the
# ones tools/libxl/build.sh patched for `backendtype=rustbk`, over Debian's. Then it runs
# the same fio job on rustbk, kernel xen-blkback and QEMU qdisk, every image on one ext4 file
# system (a virtio disk of dom0) opened with O_DIRECT. A second boot (phase tap420, tap420.sh)
# runs Debian trixie's Xen 4.20 with its own, unpatched xl, whose `backendtype=tap,
# script=rustbk` disks rustbk serves under backend/vbd3. Usage, from the repository root:
#     bash tests/xen-e2e/run.sh
# Environment: W (work folder, default target/xen-e2e, reused between runs), FIO_RUNTIME (seconds
# per fio job, default 30), XEN_TIMEOUT (seconds for the whole boot, default 1800), RUSTBK_LOG
# (RUST_LOG of the daemon, default info), E2E_PHASES (default rustbk,peers,tap420: rustbk and
# peers boot Xen 4.17, tap420 Xen 4.20), TAP420_TIMEOUT (900), DOM0_VCPUS (1),
# GUEST_VCPUS (2), PEERS_VCPUS (the peers' guest, 1), FIO_JOBS (fio jobs sharing queue depth 32, default GUEST_VCPUS), RING_ORDER
# (guest blkfront max_ring_page_order, default 2), DATA_DISK_MB (dom0's ext4 disk, default 2048),
# KVER (guest/dom0 kernel, default Debian's current).
# Exits non-zero on any E2E-FAIL line or when the E2E-DONE marker is missing. Never skips.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$REPO/tests/xen-e2e
W=${W:-$REPO/target/xen-e2e}
FIO_RUNTIME=${FIO_RUNTIME:-30}
XEN_TIMEOUT=${XEN_TIMEOUT:-1800}
RUSTBK_LOG=${RUSTBK_LOG:-info}
KVER=${KVER:-}
E2E_PHASES=${E2E_PHASES:-rustbk,peers,tap420}
# One dom0 vCPU: with two, under multi-threaded TCG, dom0 processes segfault while kernel
# blkback or qdisk serve I/O (seen without rustbk ever running).
DOM0_VCPUS=${DOM0_VCPUS:-1}
RING_ORDER=${RING_ORDER:-2}   # the guests' blkfront max_ring_page_order (multi-page rings)
# Two guest vCPUs: blkfront asks for one ring per vCPU, so multi-queue is negotiated (rustbk and
# blkback are told to offer as many rings as the guest has vCPUs).
GUEST_VCPUS=${GUEST_VCPUS:-2}
PEERS_VCPUS=${PEERS_VCPUS:-1}
FIO_JOBS=${FIO_JOBS:-$GUEST_VCPUS}
DATA_DISK_MB=${DATA_DISK_MB:-2048}
R=$W/root
# shellcheck source=tests/xen-e2e/tap420.sh
. "$SRC/tap420.sh"
T_START=$(date +%s)

log() { echo "[xen-e2e +$(( $(date +%s) - T_START ))s] $*"; }
die() { echo "E2E-FAIL: $*"; echo "OVERALL FAIL"; exit 1; }

# Host tools: scripts/setup.sh installs them (one consistent QEMU set) or fails clearly.
ensure_host_tools() {
  bash "$REPO/scripts/setup.sh" || die "scripts/setup.sh failed"
}

# rustbk's Debian package (scripts/package.sh: release build, then cargo-deb; a package whose
# inputs did not change since tests/package/check.sh built it is reused), unpacked into
# $W/pkg to check it; build_dom0_ir installs it into dom0 with dpkg -x.
build_package() {
  log "scripts/package.sh"
  DEB=$(cd "$REPO" && bash scripts/package.sh | tail -n 1) || die "scripts/package.sh failed"
  case "$DEB" in /*) ;; *) DEB=$REPO/$DEB ;; esac
  [ -f "$DEB" ] || die "scripts/package.sh printed '$DEB', not a .deb"
  PKG=$W/pkg
  rm -rf "$PKG" && dpkg -x "$DEB" "$PKG" || die "dpkg -x $DEB"
  local f
  for f in usr/sbin/rustbk etc/xen/scripts/rustbk etc/rustbk/rustbk.toml usr/lib/systemd/system/rustbk.service; do
    [ -e "$PKG/$f" ] || die "the package has no /$f"
  done
  log "package $(basename "$DEB")"
}

# The patched libxl, libxlutil and xl (tools/libxl/build.sh: Debian's Xen 4.17 source with
# tools/libxl/patches-4.17, built once per source version and series into
# /var/cache/rustbk/xen-tools). Sets XL_ROOT to the build's install root.
build_patched_xl() {
  log "tools/libxl/build.sh (patched libxl and xl, cached)"
  local out
  out=$(bash "$REPO/tools/libxl/build.sh" 2> "$W/libxl-build.log") || { tail -n 20 "$W/libxl-build.log"; die "tools/libxl/build.sh failed"; }
  XL_ROOT=$out/root
  [ -x "$XL_ROOT/usr/sbin/xl" ] || die "no xl in $XL_ROOT"
  log "patched xl from $out"
}

# The files of Debian's xen-utils-4.17 and libxenmisc4.17 that the series changes: xl,
# libxenlight, libxlutil and libxl-save-helper (built with libxenlight, whose messages it
# speaks). Everything else stays Debian's, libxenctrl and libxenguest included.
PATCHED_LIBS="libxenlight.so.4.17 libxlutil.so.4.17"
PATCHED_BINS="usr/sbin/xl:usr/lib/xen-4.17/bin/xl usr/lib/xen-4.17/bin/libxl-save-helper:usr/lib/xen-4.17/bin/libxl-save-helper"

# The patched libraries replace Debian's in dom0 and run on Debian's other Xen libraries, whose
# versions may differ (bookworm's binary packages can be newer than the source the build could
# download): every library the patched files use must export the same symbols in both builds,
# and the patched files must link with Debian's libraries and no undefined symbol.
check_xl_abi() {
  local lib chk=$W/xl-abi bin pair
  rm -rf "$chk" && mkdir -p "$chk/lib"
  cp -L "$R"/usr/lib/x86_64-linux-gnu/lib*.so.* "$chk/lib/" 2>/dev/null
  for lib in $PATCHED_LIBS; do
    [ -e "$R/usr/lib/x86_64-linux-gnu/$lib" ] || die "dom0's packages have no $lib to replace"
    cp -L "$XL_ROOT/usr/lib/x86_64-linux-gnu/$lib" "$chk/lib/$lib" || die "no $lib in $XL_ROOT"
  done
  for lib in $(for f in "$XL_ROOT"/usr/lib/x86_64-linux-gnu/libxen*.so; do
                 readelf -d "$f" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'; done | sort -u); do
    case " $PATCHED_LIBS " in *" $lib "*) continue ;; esac
    [ -e "$R/usr/lib/x86_64-linux-gnu/$lib" ] || continue
    cmp -s <(nm -D --defined-only "$XL_ROOT/usr/lib/x86_64-linux-gnu/$lib" | awk '{print $3}' | sort) \
           <(nm -D --defined-only "$R/usr/lib/x86_64-linux-gnu/$lib" | awk '{print $3}' | sort) \
      || die "$lib of the patched build and dom0's Debian $lib export different symbols"
  done
  for pair in $PATCHED_BINS; do
    bin=$XL_ROOT/${pair%%:*}
    [ -x "$bin" ] || die "no $bin"
    ! LD_LIBRARY_PATH=$chk/lib ldd -r "$bin" 2>&1 | grep -E 'not found|undefined symbol' \
      || die "${bin##*/} does not link with dom0's libraries"
  done
  for lib in $PATCHED_LIBS; do
    ! LD_LIBRARY_PATH=$chk/lib ldd -r "$chk/lib/$lib" 2>&1 | grep -E 'not found|undefined symbol' \
      || die "$lib does not link with dom0's libraries"
  done
  log "patched xl/libxenlight link with dom0's Debian $(ls "$R"/usr/lib/x86_64-linux-gnu/libxenctrl.so.*.*.* | sed 's/.*\///') and friends: same symbols"
}

# Debian packages for dom0 (Xen, its tools, QEMU for qdisk) and the kernel, unpacked into $R.
fetch_packages() {
  [ -n "$KVER" ] || KVER=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1)
  [ -n "$KVER" ] || die "cannot find the kernel version of linux-image-amd64"
  local pkgs="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common libxenmisc4.17 libxenstore4
    libxengnttab1 libxenevtchn1 libxentoollog1 libxencall1 libxenforeignmemory1 libxendevicemodel1
    libxentoolcore1 libxenhypfs1 xenstore-utils libyajl2 busybox-static qemu-system-xen
    qemu-system-data libspice-server1 libopus0 libgstreamer1.0-0 libgstreamer-plugins-base1.0-0
    liborc-0.4-0 linux-image-$KVER"
  local stamp="$KVER $(echo $pkgs | md5sum | cut -c1-8)"
  if [ "$(cat "$R/.done" 2>/dev/null)" != "$stamp" ]; then
    log "fetching Debian packages into $W/debs"
    rm -rf "$R" && mkdir -p "$W/debs" "$R" && chmod 777 "$W/debs"
    # The host's own installed versions are ignored (an empty dpkg status): dom0 gets bookworm's
    # packages even where the host runs QEMU from bookworm-backports.
    : > "$W/empty-status"
    (cd "$W/debs" && apt-get -o Dir::State::status="$W/empty-status" download $pkgs) > "$W/download.log" 2>&1 || { cat "$W/download.log"; die "apt-get download failed"; }
    local d
    for d in "$W"/debs/*.deb; do dpkg -x "$d" "$R" || die "dpkg -x $d"; done
    depmod -b "$R" "$KVER" || die "depmod"
    echo "$stamp" > "$R/.done"
  fi
  VMLINUZ=$R/boot/vmlinuz-$KVER
  MODDIR=$R/lib/modules/$KVER
  [ -f "$VMLINUZ" ] && [ -f "$R/boot/xen-4.17-amd64.gz" ] || die "kernel or Xen missing from the packages"
  zcat "$R/boot/xen-4.17-amd64.gz" > "$W/xen.elf"
}

# copy_bin IR PATH...: a binary (from $R if it is there, else from the host) and its libraries.
copy_bin() {
  local ir=$1 f src lp
  shift
  for f in "$@"; do
    if [ -e "$R$f" ]; then src=$R$f; lp=$R/usr/lib/x86_64-linux-gnu; else src=$f; lp=; fi
    [ -e "$src" ] || die "copy_bin: $f not found"
    mkdir -p "$ir$(dirname "$f")" && cp -L "$src" "$ir$f"
    copy_libs "$ir" "$src" "$lp"
  done
}

# copy_libs IR FILE [LIBRARY_PATH]: the libraries FILE needs, from LIBRARY_PATH or the host.
copy_libs() {
  local ir=$1 src=$2 lp=${3:-} lib missing
  # A library found nowhere would make the binary fail in dom0 only (QEMU's device model
  # "spawn failed"): stop here and name it.
  missing=$(LD_LIBRARY_PATH=$lp ldd "$src" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
  [ -z "$missing" ] || die "copy_libs: $src needs $missing, found neither in the fetched packages nor on this machine"
  LD_LIBRARY_PATH=$lp ldd "$src" 2>/dev/null | awk '/=>/ {print $3} /^[ \t]*\/lib64\// {print $1}' |
  while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    case "$lib" in
      /lib64/*) mkdir -p "$ir/lib64" && cp -L "$lib" "$ir/lib64/" ;;
      *) mkdir -p "$ir/lib/x86_64-linux-gnu" && cp -L "$lib" "$ir/lib/x86_64-linux-gnu/" ;;
    esac
  done
}

# The patched xl over Debian's (see PATCHED_BINS, PATCHED_LIBS), after copy_bin put Debian's
# files and libraries into IR.
install_patched_xl() {
  local ir=$1 pair lib
  for pair in $PATCHED_BINS; do
    install -m 0755 "$XL_ROOT/${pair%%:*}" "$ir/${pair#*:}" || die "cannot install ${pair#*:}"
  done
  for lib in $PATCHED_LIBS; do
    cp -L "$XL_ROOT/usr/lib/x86_64-linux-gnu/$lib" "$ir/lib/x86_64-linux-gnu/$lib" || die "cannot install $lib"
  done
  [ -z "$(find "$ir" -name 'libxenlight.so*' -not -path "$ir/lib/x86_64-linux-gnu/libxenlight.so.4.17")" ] \
    || die "a second libxenlight in the dom0 image"
}

# copy_mods IR MODULE.ko...: kernel modules (paths under kernel/) with their dependencies.
copy_mods() {
  local ir=$1 m f deps dst=$1/lib/modules/$KVER
  shift
  mkdir -p "$dst" && cp "$MODDIR"/modules.* "$dst/"
  for m in "$@"; do
    deps=$(grep "^kernel/.*/$m:" "$MODDIR/modules.dep" | tr -d ':')
    [ -n "$deps" ] || die "module $m not found"
    for f in $deps; do mkdir -p "$dst/$(dirname "$f")" && cp "$MODDIR/$f" "$dst/$f"; done
  done
}

build_guest_ir() {
  local ir=$W/domU-ir
  rm -rf "$ir" && mkdir -p "$ir"/{bin,sbin,proc,sys,dev,mnt,tmp}
  cp "$R/bin/busybox" "$ir/bin/" && cp "$SRC/domU-init.sh" "$ir/init" && chmod +x "$ir/init"
  copy_bin "$ir" /usr/bin/fio /usr/sbin/mkfs.ext4 /usr/sbin/e2fsck
  copy_mods "$ir" xen-blkfront.ko ext4.ko crc32c_generic.ko
  (cd "$ir" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$W/domU.cpio.gz") || die "guest initramfs"
}

build_dom0_ir() {
  local ir=$W/dom0-ir t x=/usr/lib/xen-4.17/bin
  rm -rf "$ir" && mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc/e2e,boot,root,lib64}
  cp "$R/bin/busybox" "$ir/bin/" && cp "$SRC/dom0-init.sh" "$ir/init" && chmod +x "$ir/init"
  cp "$SRC/dom0-lib.sh" "$ir/etc/e2e/lib.sh"
  copy_bin "$ir" /bin/bash $x/xl $x/xenstored $x/xenconsoled $x/xen-init-dom0 $x/libxl-save-helper \
    $x/xenconsole /usr/bin/xenstore /usr/libexec/xen-qemu-system-i386 /usr/bin/flock \
    /usr/sbin/debugfs /usr/sbin/e2fsck /usr/sbin/losetup /usr/bin/qemu-img
  install_patched_xl "$ir"
  for t in chmod exists list ls read rm watch write; do ln -sf xenstore "$ir/usr/bin/xenstore-$t"; done
  ln -sf $x/xl "$ir/usr/sbin/xl"
  mkdir -p "$ir/etc/xen" "$ir/usr/share/qemu"
  cp -a "$R/etc/xen/scripts" "$R/etc/xen/xl.conf" "$ir/etc/xen/"
  # rustbk as the package installs it: binary, hotplug script, unit, configuration, man pages.
  dpkg -x "$DEB" "$ir" || die "dpkg -x $DEB into the dom0 image"
  chmod 0755 "$ir"
  copy_libs "$ir" "$ir/usr/sbin/rustbk"
  cp -a "$R/usr/share/qemu/keymaps" "$ir/usr/share/qemu/"
  echo "root:x:0:0:root:/root:/bin/sh" > "$ir/etc/passwd"
  copy_mods "$ir" xen-evtchn.ko xen-gntdev.ko xen-gntalloc.ko xen-privcmd.ko xenfs.ko loop.ko xen-blkback.ko \
    virtio_pci.ko virtio_blk.ko ext4.ko crc32c_generic.ko
  cp "$VMLINUZ" "$ir/boot/domU-vmlinuz" && cp "$W/domU.cpio.gz" "$ir/boot/domU.cpio.gz"
  (cd "$ir" && find . | cpio -o -H newc 2>/dev/null > "$W/dom0.cpio") || die "dom0 initramfs"
  log "dom0 initramfs $(du -h "$W/dom0.cpio" | cut -f1), guest initramfs $(du -h "$W/domU.cpio.gz" | cut -f1)"
}

# dom0's data disk: a sparse file formatted ext4 here (inode tables and journal written now, so
# that no lazy init runs in dom0 during the benchmarks), given to dom0 as a virtio disk. Made anew
# on every run.
# make_data_disk FILE SIZE_MB: sets DATA_IMG.
make_data_disk() {
  DATA_IMG=$1
  rm -f "$DATA_IMG" && truncate -s "${2}M" "$DATA_IMG" || die "cannot create $DATA_IMG"
  mkfs.ext4 -q -F -L e2e-data -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$DATA_IMG" \
    || die "mkfs.ext4 of $DATA_IMG failed"
}

# boot_xen SERIAL XEN_ELF DOM0_KERNEL DOM0_CPIO PHASES: boots Xen + dom0 under TCG with the data
# disk DATA_IMG; streams the E2E lines; stops at E2E-DONE, a panic or the timeout.
boot_xen() {
  SERIAL=$1
  local xen=$2 kernel=$3 cpio=$4 phases=$5
  rm -f "$SERIAL"
  local xen_cmd="console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M dom0_max_vcpus=$DOM0_VCPUS dom0_vcpus_pin loglvl=all guest_loglvl=all noreboot smap=0 smep=0"
  local dom0_cmd="console=hvc0 earlyprintk=xen rdinit=/init loglevel=5 e2e_fio_runtime=$FIO_RUNTIME e2e_rustbk_log=$RUSTBK_LOG e2e_phases=$phases e2e_ring_order=$RING_ORDER e2e_guest_vcpus=$GUEST_VCPUS e2e_peers_vcpus=$PEERS_VCPUS e2e_fio_jobs=$FIO_JOBS"
  dom0_cmd=${dom0_cmd//,/,,}   # QEMU separates multiboot modules with commas
  log "booting Xen under qemu -accel tcg (timeout ${XEN_TIMEOUT}s, fio runtime ${FIO_RUNTIME}s)"
  timeout "$XEN_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 4096 \
    -nographic -no-reboot -serial "file:$SERIAL" -monitor none -net none \
    -drive "file=$DATA_IMG,format=raw,if=virtio,cache=writeback" \
    -kernel "$xen" -append "$xen_cmd" \
    -initrd "$kernel $dom0_cmd,$cpio" > "$W/qemu-stdout.log" 2>&1 &
  local qpid=$! shown=0 n
  while kill -0 $qpid 2>/dev/null; do
    n=$(grep -ac -E 'E2E-|guest: G-' "$SERIAL" 2>/dev/null); n=${n:-0}
    if [ "$n" -gt "$shown" ]; then
      grep -a -E 'E2E-|guest: G-' "$SERIAL" | sed -n "$((shown+1)),${n}p" | tr -d '\r' | sed 's/^/  | /'
      shown=$n
    fi
    grep -qa "E2E-DONE" "$SERIAL" 2>/dev/null && { sleep 3; kill $qpid 2>/dev/null; break; }
    grep -qaE "Panic on CPU|Kernel panic|Hardware Dom0 crashed" "$SERIAL" 2>/dev/null && { sleep 3; kill $qpid 2>/dev/null; break; }
    sleep 2
  done
  wait $qpid 2>/dev/null
  log "qemu finished"
}

# The fio table: IOPS, the blk-mq hardware queues the guest's disk got, and what the guest's
# blkfront negotiated with each backend (E2E-FEAT: used(offered); sector=logical/physical).
fio_table() {
  tr -d '\r' < "$SERIAL" | grep -a -E '^E2E-(FIO|FEAT):' | awk '
    function val(s) { sub("^[^=]*=", "", s); return s }
    /^E2E-FIO:/ { b = val($2); r[b] = val($3); w[b] = val($4); q[b] = val($5) }
    /^E2E-FEAT:/ { b = val($2); f = $0; sub("^E2E-FEAT: backend=[^ ]* ", "", f); feat[b] = f }
    function ratio(x, y) { return (x != "" && y > 0) ? sprintf("%.2f", x / y) : "-" }
    END {
      printf "%-15s %14s %15s %4s  %s\n", "backend", "randread IOPS", "randwrite IOPS", "hwq", "negotiated"
      split("rustbk rustbk-fixed rustbk-copy blkback qdisk", names, " ")
      for (i = 1; i <= 5; i++) { n = names[i]
        printf "%-15s %14s %15s %4s  %s\n", n, (n in r) ? r[n] : "-", (n in w) ? w[n] : "-",
          (n in q) ? q[n] : "-", (n in feat) ? feat[n] : "-" }
      printf "%-15s %14s %15s\n", "rustbk/blkback", ratio(r["rustbk"], r["blkback"]), ratio(w["rustbk"], w["blkback"])
      printf "%-15s %14s %15s\n", "rustbk/qdisk", ratio(r["rustbk"], r["qdisk"]), ratio(w["rustbk"], w["qdisk"])
      printf "%-15s %14s %15s\n", "fixed/rustbk", ratio(r["rustbk-fixed"], r["rustbk"]), ratio(w["rustbk-fixed"], w["rustbk"])
      printf "%-15s %14s %15s\n", "copy/rustbk", ratio(r["rustbk-copy"], r["rustbk"]), ratio(w["rustbk-copy"], w["rustbk"])
    }'
}

# report_boot SERIAL TITLE: one boot's results; adds to NPASS and NFAIL (a boot that never
# reached E2E-DONE is a failure).
report_boot() {
  touch "$1"   # a boot that never started has no log
  echo "================ xen-e2e results: $2 ($1) ================"
  grep -a -E '^E2E-(PASS|FAIL)' "$1" | tr -d '\r'
  echo "---------------- info ----------------"
  grep -a '^E2E-INFO' "$1" | tr -d '\r'
  NPASS=$((NPASS + $(grep -ac '^E2E-PASS' "$1"))); NFAIL=$((NFAIL + $(grep -ac '^E2E-FAIL' "$1")))
  grep -qa E2E-DONE "$1" || { echo "E2E-FAIL: $2: the E2E-DONE marker was not reached"; NFAIL=$((NFAIL+1)); tail -n 40 "$1" | tr -d '\r'; }
}

report() {
  NPASS=0 NFAIL=0
  if [ -n "$PHASES_417" ]; then
    report_boot "$W/serial.log" "Xen 4.17, patched xl ($PHASES_417)"
    echo "---------------- fio: 4 KiB random, $FIO_JOBS job(s) x iodepth $((32 / FIO_JOBS)), direct, libaio, ${FIO_RUNTIME}s per run; guest $GUEST_VCPUS vCPUs; images on ext4 (dom0's virtio disk) ----------------"
    SERIAL=$W/serial.log fio_table
  fi
  [ -z "$PHASES_420" ] || report_boot "$W/serial-tap420.log" "Xen 4.20 (trixie), unpatched xl, backendtype=tap"
  echo "SUMMARY: $NPASS pass, $NFAIL fail, wall $(( $(date +%s) - T_START ))s"
  echo "xen-e2e: $NPASS passed, $NFAIL failed"
  if [ "$NFAIL" -eq 0 ] && [ "$NPASS" -gt 0 ]; then echo "OVERALL PASS"; return 0; fi
  echo "OVERALL FAIL"
  return 1
}

# The Xen 4.17 boot (phases rustbk and peers): the patched xl over bookworm's packages.
run_417() {
  fetch_packages
  build_patched_xl
  check_xl_abi
  log "kernel $KVER; building initramfs images"
  build_guest_ir
  build_dom0_ir
  make_data_disk "$W/dom0-data.img" "$DATA_DISK_MB"
  boot_xen "$W/serial.log" "$W/xen.elf" "$VMLINUZ" "$W/dom0.cpio" "$PHASES_417"
}

# E2E_PHASES split by boot: rustbk and peers run under Xen 4.17, tap420 under Xen 4.20.
split_phases() {
  local p
  PHASES_417= PHASES_420=
  for p in ${E2E_PHASES//,/ }; do
    case $p in
      rustbk | peers) PHASES_417=${PHASES_417:+$PHASES_417,}$p ;;
      tap420) PHASES_420=tap420 ;;
      *) die "unknown phase '$p' in E2E_PHASES (rustbk, peers, tap420)" ;;
    esac
  done
}

main() {
  mkdir -p "$W" || die "cannot create $W"
  split_phases
  ensure_host_tools
  build_package
  rm -f "$W/serial.log" "$W/serial-tap420.log"
  [ -z "$PHASES_417" ] || run_417
  # In a subshell: should preparing it fail (die), the 4.17 boot's results are still reported,
  # and the missing E2E-DONE fails the run.
  [ -z "$PHASES_420" ] || (run_tap420)
  report
}

# On one line: bash reads a script as it runs it, so an edit of this file during a run must not
# be read after main returns.
main; exit $?

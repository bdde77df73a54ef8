#!/bin/busybox sh
# PID 1 of the e2e dom0. Output goes to hvc0 -> Xen console -> com1 -> the QEMU serial log, where
# run.sh collects E2E-PASS / E2E-FAIL / E2E-INFO / E2E-FIO lines and the E2E-DONE marker.
# Phases: rustbk (a missing disk fails xl create fast; create with backendtype=rustbk raw and
# qcow2 disks and a phy,script=rustbk one, data, features; hot attach/list/detach of a
# backendtype=rustbk qcow2 disk; misconfigured backendtype=rustbk disks; online resize, a
# 4096-byte-sector disk, reboot, fio, shutdown, image checks), then the peers
# (kernel xen-blkback and QEMU qdisk) running the same fio job. Every image lives in /data, an
# ext4 file system on the virtio disk QEMU gives dom0; rustbk and blkback reach theirs with
# O_DIRECT. The same script is PID 1 of the tap420 boot's dom0 (Debian trixie, Xen 4.20,
# unpatched xl), whose phase is in tap420.sh (dom0-tap420.sh).
/bin/busybox --install -s /bin
set -u
# Xen's tool directory: /usr/lib/xen-4.17/bin (bookworm) or /usr/lib/xen-4.20/bin (trixie).
XEN_BIN=$(ls -d /usr/lib/xen-4.*/bin | head -n 1)
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:$XEN_BIN
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
. /etc/e2e/lib.sh

boot_dom0() {
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev 2>/dev/null
  exec >/dev/console 2>&1
  # Xen's hotplug scripts stat /dev/stdin and use /dev/fd.
  ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin
  ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
  mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
  mkdir -p /run /tmp /var/lib/xen /var/lib/xenstored /var/log/xen/console /var/lock /data
  rm -rf /var/run && ln -s /run /var/run && mkdir -p /run/xen /run/xenstored
  pass "dom0 reached userspace (uptime $(up)s)"
}

start_xen_tools() {
  for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop; do modprobe $m || fail "modprobe $m"; done
  mount -t xenfs xenfs /proc/xen
  $XEN_BIN/xenstored --pid-file /run/xenstored.pid
  local i=0
  while ! xenstore-read /local >/dev/null 2>&1 && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
  xenstore-ls / >/dev/null 2>&1 && pass "xenstored running" || fail "xenstored not answering"
  $XEN_BIN/xen-init-dom0 >/dev/null 2>&1 && pass "xen-init-dom0" || fail "xen-init-dom0"
  $XEN_BIN/xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
  grep -q xen_blkback /proc/modules && fail "xen-blkback is loaded before the rustbk phase"
}

# /data: the ext4 file system run.sh made on the virtio disk QEMU gives dom0 (/dev/vda), where
# every image lives, so that a backend can open its image with O_DIRECT.
mount_data_disk() {
  local m i=0
  for m in virtio_pci virtio_blk crc32c_generic ext4; do
    grep -q "^${m} " /proc/modules || modprobe $m 2>/dev/null || [ -d /sys/module/$m ] || fail "modprobe $m"
  done
  while [ ! -b /dev/vda ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
  if ! mount -t ext4 /dev/vda /data; then
    fail "cannot mount the ext4 data disk /dev/vda on /data"; return 1
  fi
  if dd if=/dev/zero of=/data/.odirect bs=4096 count=1 oflag=direct 2>/tmp/odirect.err; then
    pass "/data is ext4 on virtio /dev/vda ($(df -m /data | awk 'NR==2 {print $2}') MiB), O_DIRECT works"
  else
    fail "O_DIRECT write on /data failed: $(cat /tmp/odirect.err)"
  fi
  rm -f /data/.odirect
}

# The daemon as the package's systemd unit starts it (dom0 runs no systemd): the unit's
# ExecStart line, its RuntimeDirectory, and the packaged /etc/rustbk/rustbk.toml, in which the
# test sets max_queues as an administrator would (one ring per guest vCPU; the default, one per
# core, would be one with dom0's single vCPU). phase_create checks that the disks got them.
UNIT=/usr/lib/systemd/system/rustbk.service
CONF=/etc/rustbk/rustbk.toml
start_rustbk() {
  local exec_start
  exec_start=$(sed -n 's/^ExecStart=//p' $UNIT)
  [ -n "$exec_start" ] || { fail "no ExecStart in the package's $UNIT"; return; }
  [ -f $CONF ] || { fail "the package installed no $CONF"; return; }
  sed -i "s/^# *max_queues = .*/max_queues = $GUEST_VCPUS/" $CONF
  grep -q "^max_queues = $GUEST_VCPUS\$" $CONF || fail "cannot set max_queues in $CONF"
  grep -q '^RuntimeDirectory=rustbk$' $UNIT && mkdir -p -m 0755 /run/rustbk
  RUST_LOG=$RUSTBK_LOG $exec_start >> /var/log/rustbk.log 2>&1 &
  RUSTBK_PID=$!
  sleep 2
  kill -0 $RUSTBK_PID 2>/dev/null && pass "rustbk daemon running as the package's unit starts it: $exec_start (pid $RUSTBK_PID)" \
    || { fail "rustbk daemon exited at start"; cat /var/log/rustbk.log; }
}

stop_rustbk() {
  info "rustbk log: $(wc -l < /var/log/rustbk.log) lines, $(grep -c WARN /var/log/rustbk.log) WARN, $(grep -c ERROR /var/log/rustbk.log) ERROR"
  grep -E 'WARN|ERROR' /var/log/rustbk.log | head -n 10
  kill $RUSTBK_PID 2>/dev/null
  local i=0
  while kill -0 $RUSTBK_PID 2>/dev/null && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done
  if pidof rustbk >/dev/null; then
    fail "rustbk processes still running after the daemon was stopped: $(pidof rustbk)"
    kill -9 $(pidof rustbk) 2>/dev/null
  else
    pass "rustbk daemon and workers stopped"
  fi
}

# make_image FILE SIZE_MB MAGIC: a zero-filled image (allocated) with MAGIC in sector 0, on disk.
make_image() {
  dd if=/dev/zero of=$1 bs=1M count=$2 2>/dev/null
  printf "%s" "$3" | dd of=$1 conv=notrunc 2>/dev/null
  sync
}

# The physical CPUs the guests run on: those dom0's pinned vCPUs (Xen's dom0_vcpus_pin) leave
# free, all of them if none is left. With one dom0 vCPU on QEMU's two CPUs, dom0 runs alone on
# CPU 0 and the guests' two vCPUs share CPU 1. Unpinned, with a 2-vCPU guest, dom0's processes
# segfaulted and PID 1 died (see "Known" in README.md); pinned, they did not.
guest_cpus() {
  local nr d
  nr=$(xl info 2>/dev/null | awk '/^nr_cpus/ {print $3}')
  d=$(nproc)
  if [ -n "$nr" ] && [ "$d" -lt "$nr" ]; then
    [ $((nr - 1)) -eq "$d" ] && echo "$d" || echo "$d-$((nr - 1))"
  else
    echo all
  fi
}

# guest_cfg NAME DISK...: a PV guest config running domU-init.sh with these disks.
guest_cfg() {
  local name=$1 disks="" d
  shift
  for d in "$@"; do disks="$disks'$d', "; done
  cat > /etc/xen/$name.cfg <<EOF
name = "$name"
type = "pv"
kernel = "/boot/domU-vmlinuz"
ramdisk = "/boot/domU.cpio.gz"
extra = "console=hvc0 loglevel=4 e2e_fio_runtime=$FIO_RUNTIME e2e_fio_jobs=$FIO_JOBS e2e_ring_order=$RING_ORDER"
memory = 768
vcpus = $GUEST_VCPUS
cpus = "$GUEST_CPUS"
on_crash = "preserve"
disk = [ $disks ]
EOF
}

# The unpatched path: xl's phy backend with rustbk's hotplug script (xen-blkback not loaded).
rustbk_disk() { echo "format=raw, vdev=$1, access=rw, backendtype=phy, script=rustbk, target=$2"; }
# The patched xl's own backend kind: rustbk_type_disk VDEV FORMAT TARGET.
rustbk_type_disk() { echo "format=$2, vdev=$1, access=rw, backendtype=rustbk, target=$3"; }

# make_qcow2 FILE SIZE_MB MAGIC: a qcow2 image made by qemu-img from a raw one with MAGIC in
# sector 0 (rustbk serves images QEMU made; qemu-img checks what rustbk wrote).
make_qcow2() {
  make_image $1.raw $2 $3
  qemu-img convert -f raw -O qcow2 $1.raw $1 || fail "qemu-img convert to $1"
  rm -f $1.raw
}

# check_backend DOMID DEVID TYPE PARAMS: the vbd's backend `type` and `params`, as libxl wrote
# them, and its state Connected.
check_backend() {
  local be=/local/domain/0/backend/vbd/$1/$2 t p st
  t=$(xs_or - $be/type); p=$(xs_or - $be/params); st=$(xs_or - $be/state)
  if [ "$t" = "$3" ] && [ "$p" = "$4" ] && [ "$st" = 4 ]; then
    pass "vbd $2: type=$t params=$p state=4, as xl wrote it"
  else
    fail "vbd $2: type=$t params=$p state=$st (want type=$3 params=$4 state=4)"
  fi
}

# check_hot_image RAW MD5: the guest's marker at sector 8 and the 1 MiB it wrote at 1 MiB.
check_hot_image() {
  local got
  check_sector $1 8 GUEST-WROTE-HOT "the guest's marker landed in ${1##*/}"
  got=$(dd if=$1 bs=64k skip=16 count=16 2>/dev/null | md5sum | cut -c1-32)
  [ "$got" = "$2" ] && pass "the 1 MiB the guest wrote is in ${1##*/}: md5 $got" \
    || fail "${1##*/} at 1 MiB has md5 $got, the guest wrote $2"
}

# qcow2_to_raw QCOW2 RAW: qemu-img check of an image rustbk served, then its contents as raw.
qcow2_to_raw() {
  qemu-img check -f qcow2 $1 > /tmp/qcheck.out 2>&1 && pass "qemu-img check of ${1##*/}: no errors" \
    || { fail "qemu-img check of ${1##*/}"; tail -5 /tmp/qcheck.out; }
  qemu-img convert -f qcow2 -O raw $1 $2 || fail "qemu-img convert of ${1##*/} to raw"
}

# guest_md5 EVENT: the md5= field of the guest's last EVENT line.
guest_md5() { tr -d '\r' < $GLOG | grep "G-EVENT $1" | tail -1 | sed -n 's/.* md5=\([0-9a-f]*\).*/\1/p'; }

# The main guest: xvda a raw image and xvde a qcow2 image through the patched xl's
# backendtype=rustbk, xvdf a raw image through the unpatched phy + script=rustbk path.
phase_create() {
  local domid
  make_image /data/disk.img 64 RUSTBK-E2E-DATA
  make_qcow2 /data/disk.qcow2 64 RUSTBK-E2E-DATA
  make_image /data/phy.img 16 RUSTBK-E2E-HOT
  guest_cfg g1 "$(rustbk_type_disk xvda raw /data/disk.img)" "$(rustbk_type_disk xvde qcow2 /data/disk.qcow2)" \
    "$(rustbk_disk xvdf /data/phy.img)"
  guest_use g1
  local t0=$(up)
  if xl create /etc/xen/g1.cfg > /tmp/create.out 2>&1; then
    pass "xl create g1 with backendtype=rustbk raw and qcow2 disks and a phy,script=rustbk disk"
    info "xl create returned after $(since $t0)s"
  else
    fail "xl create g1 with rustbk disks"; cat /tmp/create.out; return 1; fi
  if wait_guest "G-EVENT first-io xvda magic=RUSTBK-E2E-DATA" 300; then
    info "boot-to-guest-I/O: $(since $t0)s from xl create to the guest's first read of xvda (rustbk)"
    pass "guest read the pattern of its rustbk disk"
  else
    fail "guest never read its rustbk disk"; return 1
  fi
  wait_guest "G-EVENT data-done xvda" 300 || fail "guest data test on xvda (raw) did not finish"
  wait_guest "G-EVENT data-done xvde" 300 || fail "guest data test on xvde (qcow2) did not finish"
  wait_guest "G-EVENT hot-written xvdf" 120 || fail "guest did not write to xvdf (phy,script=rustbk)"
  domid=$(xl domid g1)
  show_features $domid 51712
  check_backend $domid 51712 rustbk raw:/data/disk.img
  check_backend $domid 51776 rustbk qcow2:/data/disk.qcow2
  check_backend $domid 51792 phy /data/phy.img
  [ "$(xs_or - /local/domain/0/backend/vbd/$domid/51712/multi-queue-max-queues)" = $GUEST_VCPUS ] \
    && pass "rustbk offers $GUEST_VCPUS queues: max_queues from $CONF" \
    || fail "rustbk offers $(xs_or - /local/domain/0/backend/vbd/$domid/51712/multi-queue-max-queues) queues, $CONF says $GUEST_VCPUS"
  check_hot_image /data/phy.img "$(guest_md5 'hot-written xvdf')"
}

# A guest whose rustbk disk does not exist: rustbk writes its reason to the backend's `error`
# node before InitWait, the hotplug script relays it, and xl fails at once (libxl would otherwise
# wait 10 s for InitWait) and prints it. Linux's error/backend/... copy outlives the device.
phase_missing_disk() {
  guest_cfg gmiss "$(rustbk_disk xvda /data/missing.img)"
  local t0=$(up) rc=0 took attach
  rm -f /tmp/missing.t1
  # Under TCG building the domain takes most of xl create's time (about 30 s): time the part
  # from libxl writing the disk's backend node to xl's exit.
  ( i=0; while [ $i -lt 1200 ]; do
      xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | grep -q state && { up > /tmp/missing.t1; break; }
      sleep 0.05; i=$((i+1)); done ) &
  timeout 120 xl create /etc/xen/gmiss.cfg > /tmp/missing.out 2>&1 || rc=$?
  took=$(since $t0)
  attach=$(since "$(cat /tmp/missing.t1 2>/dev/null || echo $t0)")
  info "xl create with a missing rustbk disk: exit $rc after ${took}s, ${attach}s after the disk's backend node appeared"
  grep 'libxl: error' /tmp/missing.out | head -n 4 | while read -r l; do info "xl: $l"; done
  if [ $rc -ne 0 ]; then pass "xl create of a guest whose rustbk disk is missing fails"
  else fail "xl create of a guest whose rustbk disk is missing succeeded"; fi
  awk "BEGIN{exit !($attach < 10)}" \
    && pass "it failed ${attach}s after the disk was added, before libxl's 10 s InitWait timeout" \
    || fail "xl create took ${attach}s after the disk was added to fail"
  grep -q -- '- rc -9' /tmp/missing.out && fail "xl waited for a timeout (rc -9)"
  if grep -q "rustbk: 2 .*Cannot open /data/missing.img" /tmp/missing.out; then
    pass "xl printed rustbk's reason: $(grep -m1 'Cannot open' /tmp/missing.out | sed 's/.*script: //')"
  else
    fail "rustbk's reason is not in xl's output"; cat /tmp/missing.out
  fi
  xenstore-ls -f /local/domain/0/error 2>/dev/null | grep -m1 "missing.img" > /tmp/missing.node
  [ -s /tmp/missing.node ] && pass "rustbk's error node is in xenstore: $(cat /tmp/missing.node)" \
    || fail "no rustbk error node under /local/domain/0/error"
  xl domid gmiss >/dev/null 2>&1 && { fail "domain gmiss left behind"; xl destroy gmiss; }
  xenstore-rm /local/domain/0/error 2>/dev/null
  sleep 1
  xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | grep -q . \
    && fail "backend/vbd nodes left after the failed create: $(xenstore-ls /local/domain/0/backend/vbd | head -5)"
  return 0
}

# xl block-attach, block-list and block-detach of a backendtype=rustbk qcow2 disk while g1 runs:
# the guest sees it, writes and reads back 1 MiB and a marker, and sees it go; qemu-img finds
# the image consistent and holding what the guest wrote.
phase_hotplug() {
  local domid=$(xl domid g1) be row
  be=/local/domain/0/backend/vbd/$domid/51728
  make_qcow2 /data/hot.qcow2 16 RUSTBK-E2E-HOT
  guest_mark
  if timeout 90 xl block-attach g1 "$(rustbk_type_disk xvdb qcow2 /data/hot.qcow2)" > /tmp/attach.out 2>&1; then
    pass "xl block-attach of a backendtype=rustbk qcow2 disk"
  else fail "xl block-attach of a backendtype=rustbk qcow2 disk"; cat /tmp/attach.out; return 1; fi
  wait_guest "G-EVENT hot-written xvdb" 120 || { fail "guest did not use the hot-plugged disk"; return 1; }
  check_backend $domid 51728 rustbk qcow2:/data/hot.qcow2
  # xl block-list: Vdev BE handle state evt-ch ring-ref BE-path.
  row=$(xl block-list g1 2>/dev/null | awk '$1 == 51728')
  info "xl block-list: $row"
  echo "$row" | awk -v be=$be '$4 == 4 && $7 == be {ok=1} END {exit !ok}' \
    && pass "xl block-list shows xvdb (51728) connected at $be" || fail "xl block-list does not show xvdb connected: '$row'"
  guest_mark
  if timeout 90 xl block-detach g1 xvdb > /tmp/detach.out 2>&1; then pass "xl block-detach of the backendtype=rustbk disk"; else
    fail "xl block-detach of the backendtype=rustbk disk"; cat /tmp/detach.out; fi
  wait_guest "G-EVENT gone xvdb" 60 && pass "guest saw xvdb go away" || fail "xvdb still in the guest"
  xl block-list g1 2>&1 | awk '$1 == 51728' | grep -q . && fail "xvdb still listed by xl block-list" \
    || pass "xl block-list no longer lists xvdb"
  xenstore-exists $be 2>/dev/null && fail "$be left after block-detach"
  qcow2_to_raw /data/hot.qcow2 /data/hot.raw
  check_hot_image /data/hot.raw "$(guest_md5 'hot-written xvdb')"
  rm -f /data/hot.raw
}

# bad_attach VDEV DEVID SPEC PATTERN WHAT: xl block-attach of a disk rustbk cannot serve into
# BAD_GUEST fails, and xl's output carries rustbk's reason (PATTERN); the guest never sees the
# disk. libxl leaves a failed attach's nodes (for every backend): xl block-detach removes them
# (backend kind BAD_KIND: vbd, or vbd3 for backendtype=tap).
BAD_GUEST=g1 BAD_KIND=vbd
bad_attach() {
  local domid=$(xl domid $BAD_GUEST) rc=0 t0=$(up)
  guest_mark
  timeout 60 xl block-attach $BAD_GUEST "$3" > /tmp/bad.out 2>&1 || rc=$?
  info "xl block-attach of $5: exit $rc after $(since $t0)s"
  grep 'libxl: error' /tmp/bad.out | head -n 3 | while read -r l; do info "xl: $l"; done
  [ $rc -ne 0 ] && pass "xl block-attach of $5 fails" || fail "xl block-attach of $5 succeeded"
  grep -q -- '- rc -9' /tmp/bad.out && fail "xl waited for a timeout (rc -9)"
  if grep -q "script: rustbk: .*$4" /tmp/bad.out; then
    pass "xl printed rustbk's reason for $5: $(grep -m1 "$4" /tmp/bad.out | sed 's/.*script: //')"
  else
    fail "rustbk's reason ($4) is not in xl's output for $5"; cat /tmp/bad.out
  fi
  timeout 60 xl block-detach $BAD_GUEST $1 > /tmp/detach.out 2>&1 || { fail "xl block-detach of the failed $1"; cat /tmp/detach.out; }
  xenstore-exists /local/domain/0/backend/$BAD_KIND/$domid/$2 2>/dev/null && fail "backend node of the failed $1 left"
  tail -n +$GMARK $GLOG 2>/dev/null | grep -q "first-io $1" && fail "the guest saw the failed $1"
  xenstore-rm /local/domain/0/error 2>/dev/null
  return 0
}

# Misconfigured backendtype=rustbk disks: a missing image, and a raw image named format=qcow2.
phase_bad_disks() {
  make_image /data/not-qcow2.img 16 RUSTBK-E2E-NOT-QCOW2
  bad_attach xvdg 51808 "$(rustbk_type_disk xvdg raw /data/missing.img)" \
    "Cannot open /data/missing.img" "a backendtype=rustbk disk whose image is missing"
  bad_attach xvdg 51808 "$(rustbk_type_disk xvdg qcow2 /data/not-qcow2.img)" \
    "bad qcow2 magic" "a raw image as a backendtype=rustbk format=qcow2 disk"
  rm -f /data/not-qcow2.img
}

# Online resize: dom0 grows a served raw image with truncate -s; rustbk takes up the new size (it
# checks once a second), writes `sectors` and rewrites `state` in one transaction as blkback does,
# and the guest's blkfront sets the new capacity without a reboot.
phase_resize() {
  local be t0
  make_image /data/grow.img 16 RUSTBK-E2E-GROW
  guest_mark
  timeout 90 xl block-attach g1 "$(rustbk_disk xvdd /data/grow.img)" > /tmp/attach.out 2>&1 \
    || { fail "block-attach of the disk to grow"; cat /tmp/attach.out; return 1; }
  wait_guest "G-EVENT grow-ready xvdd size=32768" 120 || { fail "guest did not see the 16 MiB disk to grow"; return 1; }
  be=/local/domain/0/backend/vbd/$(xl domid g1)/51760
  t0=$(up)
  truncate -s 32M /data/grow.img || fail "truncate -s 32M /data/grow.img"
  if wait_guest "G-EVENT grow-written xvdd size=65536" 200; then
    pass "the guest saw xvdd grow from 16 to 32 MiB without a reboot"
    info "online resize: the guest wrote past the old end $(since $t0)s after truncate -s"
  else
    fail "the guest never saw xvdd grow to 32 MiB"
  fi
  [ "$(xenstore-read $be/sectors 2>/dev/null)" = 65536 ] && pass "rustbk announced sectors=65536 after the image grew" \
    || fail "backend sectors=$(xenstore-read $be/sectors 2>/dev/null) after the image grew"
  grep -m1 "disk resized online" /var/log/rustbk.log | while read -r l; do info "rustbk: $l"; done
  check_sector /data/grow.img 32776 GUEST-WROTE-GROWN "the guest's write past the old end landed in grow.img"
  timeout 90 xl block-detach g1 xvdd > /dev/null 2>&1 || fail "block-detach of the grown disk"
  rm -f /data/grow.img
}

# A rustbk disk with 4096-byte logical sectors beside the 512-byte xvda, chosen per disk in
# params (`target=raw,sector-size=4096:FILE`), served by the same daemon. blkif.h (Xen 4.20):
# `sectors` and every sector field of a request stay in 512-byte units; `sector-size` only
# constrains alignment. The guest checks its logical block size and size, makes ext4 with 4 KiB
# blocks, writes files and verifies them after a remount; dom0 checks the keys and the image.
phase_sector4k() {
  local img=/data/disk4k.img mb=64 be
  local bytes=$((mb * 1048576)) domid=$(xl domid g1)
  be=/local/domain/0/backend/vbd/$domid/51760
  make_image $img $mb RUSTBK-E2E-4K-$bytes
  guest_mark
  if timeout 90 xl block-attach g1 "$(rustbk_disk xvdd "raw,sector-size=4096:$img")" > /tmp/attach.out 2>&1; then
    pass "xl block-attach of a rustbk disk with sector-size=4096 in its target"
  else fail "xl block-attach of the 4096-byte-sector disk"; cat /tmp/attach.out; return 1; fi
  wait_guest "G-EVENT data-done xvdd" 300 || { fail "guest did not finish the 4096-byte-sector disk"; return 1; }
  local ss=$(xs_or - $be/sector-size) pss=$(xs_or - $be/physical-sector-size) sectors=$(xs_or - $be/sectors)
  info "4096-byte-sector disk keys: sector-size=$ss physical-sector-size=$pss sectors=$sectors feature-large-sector-size=$(xs_or - $be/feature-large-sector-size)"
  [ "$ss" = 4096 ] && [ "$pss" = 4096 ] && pass "rustbk published sector-size=4096 physical-sector-size=4096 for xvdd" \
    || fail "xvdd: sector-size=$ss physical-sector-size=$pss, not 4096"
  [ "$sectors" = $((bytes / 512)) ] && pass "rustbk published sectors=$sectors for xvdd: 512-byte units, as blkif.h says" \
    || fail "xvdd: sectors=$sectors, not $((bytes / 512)) (the image's size in 512-byte units)"
  [ "$(xs_or - /local/domain/0/backend/vbd/$domid/51712/sector-size)" = 512 ] \
    && pass "the same daemon serves xvda with sector-size=512" || fail "xvda is not a 512-byte-sector disk"
  guest_mark
  timeout 90 xl block-detach g1 xvdd > /tmp/detach.out 2>&1 || { fail "block-detach of xvdd"; cat /tmp/detach.out; }
  wait_guest "G-EVENT gone xvdd" 60 || fail "xvdd still in the guest"
  check_image_files $img
  rm -f $img
}

phase_reboot() {
  local old=$(xl domid g1)
  guest_mark
  xl reboot g1 > /tmp/reboot.out 2>&1 || { fail "xl reboot g1"; cat /tmp/reboot.out; return 1; }
  wait_guest "G-EVENT verify-done xvda" 300 || { fail "guest did not verify its data after reboot"; return 1; }
  wait_guest "G-EVENT verify-done xvde" 300 || { fail "guest did not verify its qcow2 disk after reboot"; return 1; }
  pass "guest rebooted (domain $old -> $(xl domid g1)) and reconnected to rustbk"
}

# fio_attached NAME: fio on a rustbk disk hot-plugged into g1 as xvdc, its image marked
# RUSTBK-E2E-FIO-NAME (the guest reports it as NAME, the table's row), with what the guest's
# blkfront negotiated; the disk stays attached for the caller's own checks until fio_detach.
fio_attached() {
  local name=$1 domid
  domid=$(xl domid g1)
  make_image /data/fio-rustbk.img $FIO_SIZE_MB RUSTBK-E2E-FIO-$name
  guest_mark
  timeout 90 xl block-attach g1 "$(rustbk_disk xvdc /data/fio-rustbk.img)" > /tmp/attach.out 2>&1 \
    || { fail "block-attach of the $name fio disk"; cat /tmp/attach.out; return 1; }
  wait_guest "G-FIO $name" $((FIO_RUNTIME * 2 + 300)) \
    || { fail "no fio result for $name"; image_head /data/fio-rustbk.img; }
  report_fio $name
  fio_features $name $domid 51744 /local/domain/0/backend/vbd/$domid/51744 \
    $(odirect_of /data/fio-rustbk.img)
}

# fio_detach NAME: the fio disk of fio_attached NAME taken away and its image removed.
fio_detach() {
  timeout 90 xl block-detach g1 xvdc > /dev/null 2>&1 || fail "block-detach of the $1 fio disk"
  rm -f /data/fio-rustbk.img
}

# fio on a rustbk disk hot-plugged into g1.
phase_fio_rustbk() {
  fio_attached rustbk || return 1
  fio_detach rustbk
}

# image_head IMAGE: the first bytes of an image as dom0 reads them, beside a guest's failure.
image_head() {
  info "dom0 reads the start of $1: $(od -A n -c -N 32 $1 2>&1 | tr -s ' \n' ' ')"
}

# restart_with_setting DOMID KEY VALUE: the daemon started anew with `KEY = VALUE` in the
# packaged configuration, as an administrator changes it: the daemon is stopped, then the
# guest's worker (`rustbk ctl stop`; the guest's rings stay connected), and the new daemon
# starts a worker with the new setting, which picks up the guest's disks where the old one
# left them.
restart_with_setting() {
  local domid=$1 key=$2 value=$3 i=0
  kill $RUSTBK_PID 2>/dev/null
  while kill -0 $RUSTBK_PID 2>/dev/null && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done
  rustbk ctl stop --domid $domid > /tmp/ctl-stop.out 2>&1 \
    && pass "rustbk ctl stop: domain $domid's worker stopped, its rings left connected" \
    || { fail "rustbk ctl stop --domid $domid"; cat /tmp/ctl-stop.out; }
  sed -i "s/^#* *$key = .*/$key = $value/" $CONF
  grep -q "^$key = $value\$" $CONF || { fail "cannot set $key in $CONF"; return 1; }
  start_rustbk
  i=0
  until rustbk ctl list 2>/dev/null | grep -q " domid=$domid " || [ $i -ge 30 ]; do sleep 1; i=$((i+1)); done
  rustbk ctl list 2>/dev/null | grep -q " domid=$domid " \
    && pass "a new worker serves domain $domid after the restart ($(rustbk ctl list 2>/dev/null | grep -c " domid=$domid ") disks)" \
    || { fail "no worker serves domain $domid 30 s after the daemon restarted"; return 1; }
}

# fixed_requests DOMID DEVID: the disk's requests issued on fixed buffers (`rustbk ctl stats`).
fixed_requests() {
  number "$(rustbk ctl stats --domid $1 --devid $2 2>/dev/null | sed -n 's/.* \([0-9]*\) on fixed buffers$/\1/p')"
}

# report_fixed DOMID DEVID: how many of the disk's requests used fixed buffers, how many rings
# set up a table, how many could not (the kernel refuses file-backed memory, Linux before 6.5)
# and how many the kernel refused a guest page to (with the first reason).
report_fixed() {
  info "fixed buffers on $(uname -r): $(fixed_requests $1 $2) requests of disk $2 on fixed buffers;" \
    "$(grep -c 'registered as io_uring fixed buffers' /var/log/rustbk.log) rings set up a table," \
    "$(grep -c 'cannot set up io_uring fixed buffers' /var/log/rustbk.log) could not," \
    "$(grep -c 'refused a kept page as an io_uring fixed buffer' /var/log/rustbk.log) refused a guest page"
  grep -m1 -E 'refused a kept page|cannot set up io_uring fixed buffers' /var/log/rustbk.log | sed 's/^/E2E-INFO: /'
}

# fio once more on a hot-plugged rustbk disk, with persistently mapped grants registered as
# io_uring fixed buffers where dom0's kernel lets the worker pin gntdev-mapped pages (Linux 6.1
# refuses file-backed memory: each ring finds that out with a page of its own and serves
# without them). The guest's data on the other disks is checked
# afterwards by the same image checks as before (phase_shutdown_check).
phase_fio_fixed() {
  local domid
  domid=$(xl domid g1)
  restart_with_setting $domid fixed_buffers true || return 1
  fio_attached rustbk-fixed || return 1
  report_fixed $domid 51744
  fio_detach rustbk-fixed
}

# fio once more on a hot-plugged rustbk disk, the daemon now set to `data_path = "copy"`: the
# worker grant-copies between the guest's pages and buffers of its own (gntdev's
# IOCTL_GNTDEV_GRANT_COPY), as tapdisk and qdisk do, and offers no persistent grants. The
# guest's other disks, served the same way from the restart on, are checked afterwards by
# the image checks of phase_shutdown_check.
phase_fio_copy() {
  restart_with_setting $(xl domid g1) data_path '"copy"' || return 1
  fio_attached rustbk-copy || return 1
  grep -q 'rings connected.*data_path="\?copy' /var/log/rustbk.log \
    && pass "a rustbk disk's rings connected with grant copy" \
    || fail "no rustbk disk connected with grant copy: $(grep 'rings connected' /var/log/rustbk.log | tail -n 1)"
  fio_detach rustbk-copy
}

phase_shutdown_check() {
  timeout 120 xl shutdown -w g1 > /tmp/shutdown.out 2>&1 && pass "xl shutdown g1" \
    || { fail "xl shutdown g1"; cat /tmp/shutdown.out; xl destroy g1; }
  # libxl removes the nodes once the hotplug scripts ran: give a loaded host 20 s.
  local i=0
  while xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | grep -q . && [ $i -lt 20 ]; do
    sleep 1; i=$((i+1))
  done
  xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | grep -q . \
    && fail "backend/vbd nodes left 20 s after shutdown: $(xenstore-ls /local/domain/0/backend/vbd | head -5)"
  check_image_files /data/disk.img
  check_after_reboot_file /data/disk.img
  qcow2_to_raw /data/disk.qcow2 /data/disk-qcow2.raw
  check_image_files /data/disk-qcow2.raw
  check_after_reboot_file /data/disk-qcow2.raw
  rm -f /data/disk-qcow2.raw
}

# Peers: kernel xen-blkback (phy on a loop device with direct I/O) and QEMU qdisk, in one fresh
# guest, on the same ext4 as rustbk's. qdisk goes through dom0's page cache: libxl's only O_DIRECT
# knob for it, `direct-io-safe`, makes QEMU's xen-block ask for aio=native, which Debian's
# qemu-system-xen is built without ("not supported in this build"): the disk never connects.
phase_peers() {
  local loop domid
  [ $RUSTBK_PID -ne 0 ] && stop_rustbk
  # The peers' guest has PEERS_VCPUS vCPUs (1 by default): with 2, its kernel-blkback disk failed
  # in two runs out of two (fio aborted once, sector 0 read back empty once), cause not found
  # yet; see README.md. rustbk's guests keep GUEST_VCPUS (2) and multi-queue.
  GUEST_VCPUS=$PEERS_VCPUS
  # blkback offers one ring per dom0 CPU by default: as many as the guest has vCPUs, as rustbk.
  modprobe xen-blkback max_queues=$GUEST_VCPUS && pass "modprobe xen-blkback max_queues=$GUEST_VCPUS (after rustbk stopped)" \
    || { fail "modprobe xen-blkback"; return 1; }
  make_image /data/fio-blkback.img $FIO_SIZE_MB RUSTBK-E2E-FIO-blkback
  make_image /data/fio-qdisk.img $FIO_SIZE_MB RUSTBK-E2E-FIO-qdisk
  loop=$(/usr/sbin/losetup --direct-io=on -f --show /data/fio-blkback.img) \
    || { fail "losetup --direct-io=on of the blkback image"; return 1; }
  [ "$(cat /sys/block/${loop#/dev/}/loop/dio 2>/dev/null)" = 1 ] && pass "$loop serves fio-blkback.img with direct I/O" \
    || fail "$loop does not use direct I/O"
  guest_cfg g2 "format=raw, vdev=xvda, access=rw, backendtype=phy, target=$loop" \
               "format=raw, vdev=xvdb, access=rw, backendtype=qdisk, target=/data/fio-qdisk.img"
  guest_use g2
  xl create /etc/xen/g2.cfg > /tmp/create.out 2>&1 || { fail "xl create g2 (peers)"; cat /tmp/create.out; return 1; }
  domid=$(xl domid g2)
  wait_guest "G-FIO blkback" $((FIO_RUNTIME * 2 + 400)) || fail "no fio result for blkback"
  report_fio blkback
  fio_features blkback $domid 51712 /local/domain/0/backend/vbd/$domid/51712 \
    "$(cat /sys/block/${loop#/dev/}/loop/dio 2>/dev/null)"
  wait_guest "G-FIO qdisk" $((FIO_RUNTIME * 2 + 300)) || fail "no fio result for qdisk"
  report_fio qdisk
  fio_features qdisk $domid 51728 /local/domain/0/backend/qdisk/$domid/51728 \
    $(odirect_of /data/fio-qdisk.img)
  xl destroy g2
  /usr/sbin/losetup -d $loop
}

phases_rustbk() {
  start_rustbk
  phase_missing_disk
  if phase_create; then
    phase_hotplug
    phase_bad_disks
    phase_resize
    phase_sector4k
    phase_reboot
    phase_fio_rustbk
    phase_fio_fixed
    phase_fio_copy
  fi
  xl domid g1 >/dev/null 2>&1 && phase_shutdown_check
}

main() {
  boot_dom0
  FIO_RUNTIME=$(sed -n 's/.*e2e_fio_runtime=\([0-9]*\).*/\1/p' /proc/cmdline); FIO_RUNTIME=${FIO_RUNTIME:-30}
  RUSTBK_LOG=$(sed -n 's/.*e2e_rustbk_log=\([^ ]*\).*/\1/p' /proc/cmdline); RUSTBK_LOG=${RUSTBK_LOG:-info}
  RING_ORDER=$(sed -n 's/.*e2e_ring_order=\([0-9]*\).*/\1/p' /proc/cmdline); RING_ORDER=${RING_ORDER:-2}
  FIO_SIZE_MB=256
  GUEST_VCPUS=$(sed -n 's/.*e2e_guest_vcpus=\([0-9]*\).*/\1/p' /proc/cmdline); GUEST_VCPUS=${GUEST_VCPUS:-2}
  PEERS_VCPUS=$(sed -n 's/.*e2e_peers_vcpus=\([0-9]*\).*/\1/p' /proc/cmdline); PEERS_VCPUS=${PEERS_VCPUS:-1}
  FIO_JOBS=$(sed -n 's/.*e2e_fio_jobs=\([0-9]*\).*/\1/p' /proc/cmdline); FIO_JOBS=${FIO_JOBS:-2}
  PHASES=$(sed -n 's/.*e2e_phases=\([^ ]*\).*/\1/p' /proc/cmdline); PHASES=${PHASES:-rustbk,peers}
  RUSTBK_PID=0
  start_xen_tools
  GUEST_CPUS=$(guest_cpus)
  info "guests run on physical CPU(s) $GUEST_CPUS with $GUEST_VCPUS vCPUs; dom0 has $(nproc) vCPU(s), pinned"
  mount_data_disk || { finish; return; }
  case ",$PHASES," in *,rustbk,*) phases_rustbk ;; esac
  case ",$PHASES," in *,peers,*) phase_peers ;; esac
  case ",$PHASES," in *,tap420,*) . /etc/e2e/tap420.sh && phases_tap420 ;; esac
  finish
}

main

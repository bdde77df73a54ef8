#!/bin/busybox sh
# PID 1 of the e2e guest (a Linux PV domU). It watches for xen block devices and acts on what
# sector 0 of each new disk says (dom0 writes the magic):
#   RUSTBK-E2E-DATA        fresh data disk: mkfs.ext4, write files + checksums, fsck, verify
#   (ext4 holding /SUMS)   the same disk after a reboot: verify checksums, write one more file
#   RUSTBK-E2E-HOT         hot-plugged disk: report the magic, write a marker at sector 8
#   RUSTBK-E2E-GROW        disk dom0 grows online: report its size, wait for /sys/block to show a
#                          larger one, write and read back a marker past the old end
#   RUSTBK-E2E-FIO-<name>  benchmark disk: fio 4 KiB randread + randwrite, report IOPS
# Lines for dom0 (which relays them to the serial log): G-PASS:, G-FAIL:, G-EVENT, G-FIO.
/bin/busybox --install -s /bin
set -u
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /mnt /tmp /sbin

up() { cut -d' ' -f1 /proc/uptime; }
gpass() { echo "G-PASS: $*"; }
gfail() { echo "G-FAIL: $*"; }
event() { echo "G-EVENT $* uptime=$(up)"; }
cmdline_value() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
FIO_RUNTIME=$(cmdline_value e2e_fio_runtime)
FIO_RUNTIME=${FIO_RUNTIME:-30}

# `xl shutdown` runs /sbin/poweroff; `xl reboot` restarts at once (ctrl-alt-del=1).
setup_power() {
  printf '#!/bin/sh\nsync\nexec /bin/busybox poweroff -f\n' > /sbin/poweroff
  chmod +x /sbin/poweroff
  echo 1 > /proc/sys/kernel/ctrl-alt-del
}

load_modules() {
  local order
  order=$(cmdline_value e2e_ring_order)
  modprobe xen-blkfront max_ring_page_order=${order:-0} || gfail "modprobe xen-blkfront"
  for m in crc32c_generic ext4; do
    modprobe $m || gfail "modprobe $m"
  done
}

# The first 32 bytes of sector 0, NULs dropped.
read_magic() {
  dd if=/dev/$1 bs=512 count=1 2>/dev/null | head -c 32 | tr -d '\000'
}

data_first() {
  local d=/dev/$1 f
  mkfs.ext4 -q -F $d > /tmp/mkfs.out 2>&1 && gpass "mkfs.ext4 on $1" || { gfail "mkfs.ext4 on $1"; cat /tmp/mkfs.out; return; }
  mount -t ext4 $d /mnt || { gfail "mount $1"; return; }
  mkdir -p /mnt/e2e
  dd if=/dev/urandom of=/mnt/e2e/small bs=4k count=1 2>/dev/null
  dd if=/dev/urandom of=/mnt/e2e/medium bs=64k count=16 2>/dev/null
  dd if=/dev/urandom of=/mnt/e2e/large bs=1M count=8 2>/dev/null
  (cd /mnt/e2e && md5sum small medium large > /mnt/SUMS && sha1sum small medium large > /mnt/SUMS.sha1)
  sync
  umount /mnt || gfail "umount $1"
  if e2fsck -fn $d > /tmp/fsck.out 2>&1; then gpass "e2fsck -fn clean on $1"; else gfail "e2fsck -fn on $1"; cat /tmp/fsck.out; fi
  verify_sums $1 "after remount"
  event "data-done $1"
}

# Mounts disk $1, checks md5 and sha1 of the files, unmounts.
verify_sums() {
  mount -t ext4 /dev/$1 /mnt || { gfail "mount $1 ($2)"; return 1; }
  if (cd /mnt/e2e && md5sum -c -s ../SUMS && sha1sum -c -s ../SUMS.sha1); then
    gpass "checksums of 3 files verified on $1 ($2)"
  else
    gfail "checksums differ on $1 ($2)"
  fi
  umount /mnt
}

data_after_reboot() {
  verify_sums $1 "after reboot"
  mount -t ext4 /dev/$1 /mnt && echo "written-after-reboot" > /mnt/e2e/after-reboot && sync && umount /mnt \
    && gpass "wrote /e2e/after-reboot on $1" || gfail "write after reboot on $1"
  event "verify-done $1"
}

hot_disk() {
  gpass "hot-plugged $1 shows its magic ($2)"
  printf "GUEST-WROTE-HOT" | dd of=/dev/$1 bs=512 seek=8 conv=notrunc,fsync 2>/dev/null \
    && event "hot-written $1" || gfail "write to hot-plugged $1"
}

# Online resize: dom0 grows the image under the running guest; blkfront must set the new capacity
# (/sys/block/$1/size) without a reboot, and the new sectors must take data.
grow_disk() {
  local n=$1 old new got i=0 marker=GUEST-WROTE-GROWN
  old=$(cat /sys/block/$n/size)
  event "grow-ready $n size=$old"
  new=$old
  while [ "$new" = "$old" ] && [ $i -lt 900 ]; do sleep 0.2; new=$(cat /sys/block/$n/size); i=$((i+1)); done
  if [ "$new" = "$old" ]; then
    gfail "the size of $n never changed from $old sectors"; event "grow-written $n size=$new"; return
  fi
  gpass "$n grew online from $old to $new sectors (/sys/block/$n/size)"
  printf "$marker" | dd of=/dev/$n bs=512 seek=$((old + 8)) conv=notrunc,fsync 2>/dev/null \
    || gfail "write past the old end of $n"
  # Drop the page cache so that the read below goes to the backend.
  sync; echo 3 > /proc/sys/vm/drop_caches
  got=$(dd if=/dev/$n bs=512 skip=$((old + 8)) count=1 2>/dev/null | head -c ${#marker})
  [ "$got" = "$marker" ] && gpass "wrote and read back a marker past the old end of $n" \
    || gfail "marker past the old end of $n reads '$got'"
  event "grow-written $n size=$new"
}

# IOPS of one fio job ($2 = randread|randwrite) on /dev/$1; empty on failure.
fio_iops() {
  local field=8
  [ "$2" = randwrite ] && field=49
  fio --name=$2 --filename=/dev/$1 --rw=$2 --bs=4k --iodepth=32 --direct=1 --ioengine=libaio \
      --runtime=$FIO_RUNTIME --time_based --output-format=terse --terse-version=3 2>/tmp/fio.err |
    awk -F';' -v f=$field '$1 == "3" { printf "%d", $f }'
}

fio_disk() {
  local rr rw
  rr=$(fio_iops $1 randread)
  rw=$(fio_iops $1 randwrite)
  if [ -n "$rr" ] && [ -n "$rw" ] && [ "$rr" -gt 0 ] && [ "$rw" -gt 0 ]; then
    gpass "fio on $1 ($2) ran"
  else
    gfail "fio on $1 ($2): randread='$rr' randwrite='$rw'"; cat /tmp/fio.err
  fi
  echo "G-FIO $2 randread=${rr:-0} randwrite=${rw:-0}"
}

new_disk() {
  local n=$1 magic
  magic=$(read_magic $n)
  event "first-io $n magic=$magic"
  case "$magic" in
    RUSTBK-E2E-DATA*) gpass "read the pattern in sector 0 of $n"; data_first $n ;;
    RUSTBK-E2E-HOT*) hot_disk $n "$magic" ;;
    RUSTBK-E2E-GROW*) grow_disk $n ;;
    RUSTBK-E2E-FIO-*) fio_disk $n "${magic#RUSTBK-E2E-FIO-}" ;;
    *)
      if mount -t ext4 -o ro /dev/$n /mnt 2>/dev/null && [ -f /mnt/SUMS ]; then
        umount /mnt; data_after_reboot $n
      else
        gfail "disk $n has no known content (magic '$magic')"
      fi
      ;;
  esac
}

# Reports disks that appeared or went away, forever.
watch_disks() {
  local seen=" " s n
  while true; do
    for s in /sys/block/xvd*; do
      [ -e "$s" ] || continue
      n=${s##*/}
      case "$seen" in *" $n "*) continue ;; esac
      [ -b /dev/$n ] || mdev -s 2>/dev/null
      [ -b /dev/$n ] || continue
      seen="$seen$n "
      new_disk $n
    done
    for n in $seen; do
      [ -e /sys/block/$n ] && continue
      event "gone $n"
      seen=$(echo "$seen" | sed "s/ $n / /")
    done
    sleep 1
  done
}

event "guest-up kernel=$(uname -r)"
setup_power
load_modules
watch_disks

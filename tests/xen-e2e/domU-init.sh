#!/bin/busybox sh
# PID 1 of the e2e guest (a Linux PV domU). It watches for xen block devices and acts on what
# sector 0 of each new disk says (dom0 writes the magic):
#   RUSTBK-E2E-DATA        fresh data disk: mkfs.ext4, write files + checksums, fsck, verify
#   RUSTBK-E2E-4K-<bytes>  the same on a disk with 4096-byte logical sectors, after checking its
#                          logical block size and its size (<bytes>, the image's)
#   (ext4 holding /SUMS)   the same disk after a reboot: verify checksums, write one more file
#   RUSTBK-E2E-HOT         disk to write into: a marker at sector 8, 1 MiB at 1 MiB read back
#                          after dropping the page cache, its md5 in the event for dom0
#   RUSTBK-E2E-GROW        disk dom0 grows online: report its size, wait for /sys/block to show a
#                          larger one, write and read back a marker past the old end
#   RUSTBK-E2E-FIO-<name>  benchmark disk: fio 4 KiB randread + randwrite, report IOPS and the
#                          number of blk-mq hardware queues (rings) the disk got
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
FIO_JOBS=$(cmdline_value e2e_fio_jobs)
FIO_JOBS=${FIO_JOBS:-1}

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

# The first 32 bytes of sector 0, NULs dropped. A disk shows in /sys/block (and so gets its
# /dev node from mdev) a moment before the kernel lets it be opened (device_add_disk, then
# bdev_add): a read that fails is tried again, up to 5 s, each failure reported with dd's
# error. A read that succeeds is taken as it is, zeros too.
read_magic() {
  local i
  for i in $(seq 25); do
    if dd if=/dev/$1 of=/tmp/magic-$1 bs=512 count=1 2>/tmp/magic-$1.err; then
      head -c 32 /tmp/magic-$1 | tr -d '\000'
      return 0
    fi
    event "magic-retry $1: $(head -c 200 /tmp/magic-$1.err | tr '\n' ' ')" >&2
    sleep 0.2
  done
}

# data_first DISK [MKFS_OPTION...]: ext4 on a fresh disk, files with checksums, fsck, verify.
data_first() {
  local n=$1 d=/dev/$1
  shift
  mkfs.ext4 -q -F "$@" $d > /tmp/mkfs.out 2>&1 && gpass "mkfs.ext4${*:+ $*} on $n" || { gfail "mkfs.ext4 on $n"; cat /tmp/mkfs.out; return; }
  mount -t ext4 $d /mnt || { gfail "mount $n"; return; }
  mkdir -p /mnt/e2e
  dd if=/dev/urandom of=/mnt/e2e/small bs=4k count=1 2>/dev/null
  dd if=/dev/urandom of=/mnt/e2e/medium bs=64k count=16 2>/dev/null
  dd if=/dev/urandom of=/mnt/e2e/large bs=1M count=8 2>/dev/null
  (cd /mnt/e2e && md5sum small medium large > /mnt/SUMS && sha1sum small medium large > /mnt/SUMS.sha1)
  sync
  umount /mnt || gfail "umount $n"
  if e2fsck -fn $d > /tmp/fsck.out 2>&1; then gpass "e2fsck -fn clean on $n"; else gfail "e2fsck -fn on $n"; cat /tmp/fsck.out; fi
  verify_sums $n "after remount"
  event "data-done $n"
}

# check_lbs DISK SIZE: the logical block size blkfront gave DISK (from `sector-size`).
check_lbs() {
  local lbs
  lbs=$(cat /sys/block/$1/queue/logical_block_size)
  [ "$lbs" = "$2" ] && gpass "$1 logical_block_size is $2" || gfail "$1 logical_block_size is $lbs, not $2"
}

# direct_read DISK BS: reads the first 64 KiB of DISK with O_DIRECT in BS-byte blocks.
direct_read() {
  fio --name=direct$2 --filename=/dev/$1 --rw=read --bs=$2 --size=64k --direct=1 \
      --ioengine=psync > /tmp/direct.err 2>&1
}

# A disk with 4096-byte sectors of $2 bytes: the logical block size, the size (/sys/block/X/size
# counts 512-byte units whatever the sector size: blkfront passes `sectors` to set_capacity),
# direct I/O granularity, then the ext4 test with 4 KiB blocks.
disk_4k() {
  local n=$1 bytes=$2 size
  check_lbs $n 4096
  size=$(cat /sys/block/$n/size)
  if [ "$size" = $((bytes / 512)) ]; then
    gpass "$n size is $size 512-byte units = $bytes bytes, the image's size"
  else
    gfail "$n size is $size 512-byte units ($((size * 512)) bytes), the image has $bytes"
  fi
  # fio, not busybox dd: dd retries a refused O_DIRECT read without O_DIRECT.
  direct_read $n 4096 && gpass "4096-byte O_DIRECT reads of $n work" \
    || { gfail "4096-byte O_DIRECT reads of $n failed"; cat /tmp/direct.err; }
  direct_read $n 512 && gfail "512-byte O_DIRECT reads of $n were accepted" \
    || gpass "512-byte O_DIRECT reads of $n are refused by the guest (4096-byte sectors)"
  data_first $n -b 4096
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

# A disk to write into: a marker at sector 8 and 1 MiB of random data at 1 MiB, read back after
# dropping the page cache; the event carries the data's md5 for dom0 to find in the image.
hot_disk() {
  local n=$1 sum back
  gpass "$n shows its magic ($2)"
  printf "GUEST-WROTE-HOT" | dd of=/dev/$n bs=512 seek=8 conv=notrunc,fsync 2>/dev/null \
    || gfail "write of the marker to $n"
  dd if=/dev/urandom of=/tmp/hot.bin bs=64k count=16 2>/dev/null
  dd if=/tmp/hot.bin of=/dev/$n bs=64k seek=16 conv=notrunc,fsync 2>/dev/null || gfail "write of 1 MiB to $n"
  sync; echo 3 > /proc/sys/vm/drop_caches
  sum=$(md5sum < /tmp/hot.bin | cut -c1-32)
  back=$(dd if=/dev/$n bs=64k skip=16 count=16 2>/dev/null | md5sum | cut -c1-32)
  [ "$sum" = "$back" ] && gpass "read back the 1 MiB written to $n: md5 match" \
    || gfail "the 1 MiB read back from $n differs (md5 $back, wrote $sum)"
  event "hot-written $n md5=$sum"
}

# RUSTBK-E2E-VERIFY: fio writes every 4 KiB block of the first 64 MiB once, in random order,
# each with a crc32c and its offset, at queue depth 16, then reads each back and checks it;
# the first bad block fails the run. One-page requests: the fixed-buffer path, when dom0 has it.
verify_disk() {
  local n=$1 out
  out=$(fio --name=verify --filename=/dev/$n --rw=randwrite --bs=4k --size=64M --iodepth=16 \
      --direct=1 --ioengine=libaio --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --clocksource=clock_gettime --output-format=terse --terse-version=3 2>/tmp/verify.err)
  if [ $? -eq 0 ] && [ -n "$out" ]; then
    gpass "fio wrote 64 MiB of 4 KiB blocks to $n and read every one back intact (crc32c)"
  else
    gfail "fio's write-and-verify on $n failed"
    sed "s/^/G-EVENT fio-stderr $n verify: /" /tmp/verify.err | head -n 20
  fi
  event "verified $n"
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

# IOPS of one fio run ($2 = randread|randwrite) on /dev/$1: FIO_JOBS jobs (one per vCPU, so
# that every ring is used) with queue depth 32 in all; empty on failure (stderr in
# /tmp/fio-$2.err). clock_gettime, not the TSC: under TCG the vCPUs' TSCs disagree (Linux marks
# the TSC unstable) and a fio run with two jobs once aborted.
fio_iops() {
  local field=8
  [ "$2" = randwrite ] && field=49
  fio --name=$2 --filename=/dev/$1 --rw=$2 --bs=4k --iodepth=$((32 / FIO_JOBS)) --numjobs=$FIO_JOBS \
      --group_reporting --direct=1 --ioengine=libaio --clocksource=clock_gettime \
      --runtime=$FIO_RUNTIME --time_based --output-format=terse --terse-version=3 2>/tmp/fio-$2.err |
    awk -F';' -v f=$field '$1 == "3" { printf "%d", $f }'
}

# Relays fio's stderr of run $2 on $1 (dom0 passes on only G- lines).
fio_errors() {
  sed "s/^/G-EVENT fio-stderr $1 $2: /" /tmp/fio-$2.err | head -n 20
}

# fio_iops, once more if the first run printed no result: under TCG fio itself has aborted
# (see above). The first run's errors and the retry go to the console (stderr: stdout is the
# caller's result), so the log shows every retry.
fio_iops_retried() {
  local iops
  iops=$(fio_iops $1 $2)
  if [ -z "$iops" ] || [ "$iops" -le 0 ]; then
    { fio_errors $1 $2; event "fio-retry $1 $2"; } >&2
    iops=$(fio_iops $1 $2)
  fi
  echo "$iops"
}

fio_disk() {
  local rr rw
  rr=$(fio_iops_retried $1 randread)
  rw=$(fio_iops_retried $1 randwrite)
  if [ -n "$rr" ] && [ -n "$rw" ] && [ "$rr" -gt 0 ] && [ "$rw" -gt 0 ]; then
    gpass "fio on $1 ($2) ran"
  else
    gfail "fio on $1 ($2): randread='$rr' randwrite='$rw'"
    fio_errors $1 randread
    fio_errors $1 randwrite
  fi
  echo "G-FIO $2 randread=${rr:-0} randwrite=${rw:-0} hwq=$(ls /sys/block/$1/mq 2>/dev/null | wc -l)"
}

# disk_diag DISK: what the guest sees on a disk whose first sector is not what dom0 wrote:
# the sector read again past the page cache and through it (zeros there and the magic past it
# would mean a first read answered with the wrong data), and the kernel's last messages about
# the disk.
disk_diag() {
  local bytes cached
  bytes=$(dd if=/dev/$1 bs=512 count=1 iflag=direct 2>/tmp/dd-$1.err | od -A n -t x1 -N 48 | tr -s ' \n' ' ')
  event "sector0 $1 O_DIRECT: ${bytes:-nothing read} $(head -c 200 /tmp/dd-$1.err | tr '\n' ' ')"
  cached=$(dd if=/dev/$1 bs=512 count=1 2>/tmp/dd-$1.err | od -A n -t x1 -N 48 | tr -s ' \n' ' ')
  event "sector0 $1 page cache: ${cached:-nothing read} $(head -c 200 /tmp/dd-$1.err | tr '\n' ' ')"
  dmesg | grep -i -e "$1" -e blkfront -e "I/O error" | tail -n 8 | while read -r line; do
    event "dmesg $1: $line"
  done
}

new_disk() {
  local n=$1 magic
  magic=$(read_magic $n)
  event "first-io $n magic=$magic"
  case "$magic" in
    RUSTBK-E2E-DATA*) gpass "read the pattern in sector 0 of $n"; check_lbs $n 512; data_first $n ;;
    RUSTBK-E2E-4K-*) disk_4k $n "${magic#RUSTBK-E2E-4K-}" ;;
    RUSTBK-E2E-HOT*) hot_disk $n "$magic" ;;
    RUSTBK-E2E-GROW*) grow_disk $n ;;
    RUSTBK-E2E-FIO-*) fio_disk $n "${magic#RUSTBK-E2E-FIO-}" ;;
    RUSTBK-E2E-VERIFY*) verify_disk $n ;;
    *)
      if mount -t ext4 -o ro /dev/$n /mnt 2>/dev/null && [ -f /mnt/SUMS ]; then
        umount /mnt; data_after_reboot $n
      else
        gfail "disk $n has no known content (magic '$magic')"
        disk_diag $n
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

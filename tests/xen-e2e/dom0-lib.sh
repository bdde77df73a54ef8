# Helpers for dom0-init.sh (sourced; installed in the dom0 initramfs as /etc/e2e/lib.sh).

FAILS=0
GLOG=/dev/null     # console log of the guest under test
GMARK=1            # first log line wait_guest looks at
RELAYED=0          # guest log lines already relayed to the serial console

up() { cut -d' ' -f1 /proc/uptime; }
since() { awk "BEGIN{printf \"%.1f\", $(up)-$1}"; }
pass() { echo "E2E-PASS: $*"; }
fail() { echo "E2E-FAIL: $*"; FAILS=$((FAILS+1)); }
info() { echo "E2E-INFO: $*"; }

loglines() { if [ -f "$GLOG" ]; then wc -l < "$GLOG"; else echo 0; fi; }

# Follows guest NAME's console log (xenconsoled --log=guest; kept across reboots).
guest_use() {
  GLOG=/var/log/xen/console/guest-$1.log
  GMARK=1
  RELAYED=0
}

# Later waits only look at guest output from now on.
guest_mark() {
  GMARK=$(( $(loglines) + 1 ))
}

# number TEXT: TEXT if it is a decimal number, else 0. A helper that crashed (see "Known" in
# README.md) leaves no number, and an arithmetic error would end PID 1 and panic dom0.
number() { case "$1" in ''|*[!0-9]*) echo 0 ;; *) echo "$1" ;; esac; }

# Copies the guest's new G-PASS / G-FAIL / G-EVENT lines to the serial console.
relay() {
  local n nfail
  n=$(number "$(loglines)")
  if [ "$n" -lt "$RELAYED" ]; then GMARK=1; RELAYED=0; fi   # the log was truncated
  [ "$n" -gt "$RELAYED" ] || return 0
  sed -n "$((RELAYED+1)),${n}p" $GLOG | tr -d '\r' | while read -r line; do
    case "$line" in
      G-PASS:*) echo "E2E-PASS: guest: ${line#G-PASS: }" ;;
      G-FAIL:*) echo "E2E-FAIL: guest: ${line#G-FAIL: }" ;;
      G-EVENT*|G-FIO*) echo "guest: $line" ;;
    esac
  done
  nfail=$(sed -n "$((RELAYED+1)),${n}p" $GLOG | grep -c '^G-FAIL:')
  FAILS=$((FAILS + $(number "$nfail")))
  RELAYED=$n
}

# wait_guest PATTERN TIMEOUT_S: waits for PATTERN in the guest log after the mark.
wait_guest() {
  local i=0
  while [ $i -lt $2 ]; do
    relay
    tail -n +$GMARK $GLOG 2>/dev/null | grep -q "$1" && { sleep 1; relay; return 0; }
    sleep 1
    i=$((i+1))
  done
  relay
  echo "---- guest log tail ($GLOG) ----"; tail -n 30 $GLOG | tr -d '\r'
  return 1
}

# show_features DOMID DEVID: what the Linux frontend and rustbk negotiated, from xenstore.
show_features() {
  local fe=/local/domain/$1/device/vbd/$2 be=/local/domain/0/backend/vbd/$1/$2 k
  for k in protocol ring-page-order multi-queue-num-queues feature-persistent state; do
    info "frontend $k=$(xenstore-read $fe/$k 2>/dev/null || echo -)"
  done
  for k in max-ring-page-order multi-queue-max-queues feature-persistent feature-flush-cache \
           feature-barrier feature-discard feature-max-indirect-segments sectors sector-size \
           physical-sector-size info state; do
    info "backend $k=$(xenstore-read $be/$k 2>/dev/null || echo -)"
  done
  [ "$(xenstore-read $be/state 2>/dev/null)" = 4 ] && pass "rustbk backend state Connected (4)" \
    || fail "rustbk backend not Connected"
}

# check_sector FILE SECTOR TEXT MESSAGE
check_sector() {
  local got
  got=$(dd if=$1 bs=512 skip=$2 count=1 2>/dev/null | head -c ${#3})
  [ "$got" = "$3" ] && pass "$4" || fail "$4 (found '$got')"
}

# check_image_files IMAGE: e2fsck -fn of the guest's ext4 image, then the files the guest wrote
# (small, medium, large), read out of it with debugfs, against the guest's md5 sums.
check_image_files() {
  local img=$1 d=/tmp/img-files f
  rm -rf $d && mkdir -p $d
  e2fsck -fn $img > /tmp/fsck.out 2>&1 && pass "e2fsck -fn of ${img##*/} in dom0: clean" \
    || { fail "e2fsck -fn of ${img##*/} in dom0"; tail -5 /tmp/fsck.out; }
  debugfs -R "dump /SUMS $d/SUMS" $img > /dev/null 2>&1
  for f in small medium large; do debugfs -R "dump /e2e/$f $d/$f" $img > /dev/null 2>&1; done
  (cd $d && md5sum -c -s SUMS) && pass "dom0 reads the guest's files out of ${img##*/}: md5 match" \
    || fail "files read from ${img##*/} in dom0 do not match the guest's checksums"
}

# The file the guest wrote after its reboot, read out of IMAGE.
check_after_reboot_file() {
  debugfs -R "dump /e2e/after-reboot /tmp/after-reboot" $1 > /dev/null 2>&1
  grep -q written-after-reboot /tmp/after-reboot 2>/dev/null && pass "the file written after reboot is in the image" \
    || fail "the file written after reboot is missing from the image"
}

# report_fio NAME: the guest's IOPS for backend NAME as an E2E-FIO line.
report_fio() {
  local line
  line=$(tr -d '\r' < $GLOG | grep "^G-FIO $1 " | tail -1)
  [ -n "$line" ] && echo "E2E-FIO: backend=$1 ${line#G-FIO $1 }"
}

# xs_or DEFAULT PATH: a xenstore value, DEFAULT when the key is absent.
xs_or() { xenstore-read "$2" 2>/dev/null || echo "$1"; }

# odirect_of FILE: 1 if some process has FILE open with O_DIRECT, 0 if only without, - if no
# process has it open (kernel blkback reaches it through a loop device: see loop_dio).
odirect_of() {
  local fd p flags seen=-
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "$1" ] || continue
    p=${fd%/fd/*}
    flags=$(sed -n 's/^flags:[[:space:]]*//p' "$p/fdinfo/${fd##*/}" 2>/dev/null)
    [ -n "$flags" ] || continue
    if [ $(( 0$flags & 040000 )) -ne 0 ]; then echo 1; return; fi
    seen=0
  done
  echo $seen
}

# fio_features NAME DOMID DEVID BACKEND_DIR ODIRECT: what the guest's blkfront and backend NAME
# negotiated for the fio disk, read from xenstore while it is connected, as an E2E-FEAT line:
# queues and ring order used (backend's offer in brackets), persistent grants (both sides),
# the indirect segments offered, flush, discard, logical/physical sector size, and whether the
# image is opened with O_DIRECT.
fio_features() {
  local fe=/local/domain/$2/device/vbd/$3 be=$4 pers
  pers=$(( $(xs_or 0 $fe/feature-persistent) & $(xs_or 0 $be/feature-persistent) ))
  echo "E2E-FEAT: backend=$1" \
    "queues=$(xs_or 1 $fe/multi-queue-num-queues)($(xs_or 1 $be/multi-queue-max-queues))" \
    "ring-order=$(xs_or 0 $fe/ring-page-order)($(xs_or 0 $be/max-ring-page-order))" \
    "persistent=$pers indirect=$(xs_or 0 $be/feature-max-indirect-segments)" \
    "flush=$(xs_or 0 $be/feature-flush-cache) discard=$(xs_or 0 $be/feature-discard)" \
    "sector=$(xs_or - $be/sector-size)/$(xs_or - $be/physical-sector-size) odirect=$5"
}

dump_logs() {
  echo "---- /var/log/rustbk.log (tail) ----"; tail -n 80 /var/log/rustbk.log 2>/dev/null
  echo "---- xen-hotplug.log (tail) ----"; tail -n 20 /var/log/xen/xen-hotplug.log 2>/dev/null
  for f in /var/log/xen/console/guest-*.log; do echo "---- $f (tail) ----"; tail -n 30 $f | tr -d '\r'; done
  echo "---- xl dmesg (tail) ----"; xl dmesg 2>&1 | tail -n 15
}

# dom0 itself must stay healthy: no process may have crashed.
check_dom0_health() {
  local n
  n=$(dmesg | grep -c -E 'segfault at|general protection|invalid opcode')
  if [ "$n" -gt 0 ]; then
    fail "$n dom0 processes crashed (segfault/GP) during the test"
    dmesg | grep -E -B2 -A2 'segfault at|general protection|invalid opcode' | head -n 40
  else
    pass "no dom0 process crashed"
  fi
  dmesg | grep -i -E 'BUG|Oops|WARNING:|xen:grant_table|gntdev' | head -n 20
}

finish() {
  relay
  check_dom0_health
  [ $FAILS -gt 0 ] && dump_logs
  echo "E2E[$(up)] E2E-DONE fails=$FAILS"
  sync
  poweroff -f
}

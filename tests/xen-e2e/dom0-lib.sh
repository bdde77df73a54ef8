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

# Copies the guest's new G-PASS / G-FAIL / G-EVENT lines to the serial console.
relay() {
  local n
  n=$(loglines)
  if [ "$n" -lt "$RELAYED" ]; then GMARK=1; RELAYED=0; fi   # the log was truncated
  [ "$n" -gt "$RELAYED" ] || return 0
  sed -n "$((RELAYED+1)),${n}p" $GLOG | tr -d '\r' | while read -r line; do
    case "$line" in
      G-PASS:*) echo "E2E-PASS: guest: ${line#G-PASS: }" ;;
      G-FAIL:*) echo "E2E-FAIL: guest: ${line#G-FAIL: }" ;;
      G-EVENT*|G-FIO*) echo "guest: $line" ;;
    esac
  done
  FAILS=$((FAILS + $(sed -n "$((RELAYED+1)),${n}p" $GLOG | grep -c '^G-FAIL:')))
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

# Reads the files the guest wrote out of the ext4 image with debugfs and checks them.
check_image_files() {
  local img=$1 d=/tmp/img-files f
  mkdir -p $d
  e2fsck -fn $img > /tmp/fsck.out 2>&1 && pass "e2fsck -fn of the image in dom0: clean" \
    || { fail "e2fsck -fn of the image in dom0"; tail -5 /tmp/fsck.out; }
  debugfs -R "dump /SUMS $d/SUMS" $img > /dev/null 2>&1
  for f in small medium large after-reboot; do debugfs -R "dump /e2e/$f $d/$f" $img > /dev/null 2>&1; done
  (cd $d && md5sum -c -s SUMS) && pass "dom0 reads the guest's files out of the image: md5 match" \
    || fail "files read from the image in dom0 do not match the guest's checksums"
  grep -q written-after-reboot $d/after-reboot 2>/dev/null && pass "the file written after reboot is in the image" \
    || fail "the file written after reboot is missing from the image"
}

# report_fio NAME: the guest's IOPS for backend NAME as an E2E-FIO line.
report_fio() {
  local line
  line=$(tr -d '\r' < $GLOG | grep "^G-FIO $1 " | tail -1)
  [ -n "$line" ] && echo "E2E-FIO: backend=$1 ${line#G-FIO $1 }"
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

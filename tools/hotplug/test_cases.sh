#!/bin/bash
# The cases of test.sh, run in its private mount namespace (WORK and XENSTORED_PATH set).

set -u
mount --bind "$WORK/log" /var/log || exit 2
failed=0
checks=0

# check NAME ACTUAL EXPECTED
check() {
  checks=$((checks + 1))
  if [ "$2" = "$3" ]; then
    echo "ok   $1"
  else
    echo "FAIL $1: got '$2', want '$3'"
    failed=$((failed + 1))
  fi
}

read_key() { xenstore-read "$1" 2>/dev/null || true; }

# add BACKEND PARAMS [ERROR]: a fresh backend node at InitWait, then `rustbk add` as libxl
# runs it; sets rc, status, error, pdev and pdp.
add() {
  local be=$1
  xenstore-rm "$be" 2>/dev/null || true
  xenstore-write "$be/params" "$2" "$be/state" 2
  [ $# -ge 3 ] && xenstore-write "$be/error" "$3"
  XENBUS_PATH=$be bash "$WORK/scripts/rustbk" add
  rc=$?
  status=$(read_key "$be/hotplug-status")
  error=$(read_key "$be/hotplug-error")
  pdev=$(read_key "$be/physical-device")
  pdp=$(read_key "$be/physical-device-path")
}

tap=/local/domain/0/backend/vbd3/1/51712
vbd=/local/domain/0/backend/vbd/1/51712

add "$tap" "aio:$WORK/a.img"
check "tap raw image: connected" "$rc $status" "0 connected"
add "$tap" "aio:qcow2:$WORK/b.qcow2"
check "tap target=qcow2:PATH: connected" "$rc $status" "0 connected"
add "$tap" "aio:null:8G"
check "tap target=null:8G: connected" "$rc $status" "0 connected"
add "$tap" "aio:qcow2:$WORK/missing.qcow2"
check "tap missing qcow2: refused" "$rc $status" "1 error"
check "tap missing qcow2: message" "$error" \
  "rustbk: disk target $WORK/missing.qcow2 is neither a file nor a block device"
add "$tap" "aio:thin:$WORK:vm1"
check "tap thin target without a pool: refused" "$rc $status" "1 error"
add "$tap" "vhd:$WORK/a.img" '22 Bad node params = "vhd:..": unknown format prefix "vhd"'
check "rustbk's error relayed" "$rc $error" \
  '1 rustbk: 22 Bad node params = "vhd:..": unknown format prefix "vhd"'

loop=$(ls /dev/loop[0-9]* 2>/dev/null | head -n 1 || true)
if [ -b "$loop" ]; then
  add "$tap" "aio:$loop"
  check "tap block device: no physical-device-path under vbd3" "$rc $status [$pdev] [$pdp]" \
    "0 connected [] []"
  add "$vbd" "$loop"
  check "vbd block device: physical-device as Xen's block script" "$rc [$pdp]" "0 [$loop]"
else
  echo "FAIL no loop device to check physical-device with"
  failed=$((failed + 1))
fi

echo "$checks checks, $failed failed"
[ "$failed" = 0 ]

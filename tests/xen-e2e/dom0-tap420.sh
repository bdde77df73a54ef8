# The tap420 phase (sourced by dom0-init.sh in the trixie dom0; installed as /etc/e2e/tap420.sh):
# Xen 4.20 with trixie's own, unpatched xl. The guest's disks are `backendtype=tap,
# script=rustbk`: libxl 4.19 and later writes them under backend/vbd3 (tapback's kind) with
# params `aio:<target>`, and rustbk serves them (tools/libxl/README.md, "Without the patch").
# One raw image and one qcow2 image (`target=qcow2:FILE`) at create time, one more qcow2 image
# attached and detached while the guest runs; the guest writes a marker and 1 MiB to each and
# reads it back after dropping its page cache (domU-init.sh's RUSTBK-E2E-HOT disks), and dom0
# finds both in the images after the guest is gone.

VBD3=/local/domain/0/backend/vbd3

# tap_disk VDEV TARGET: a disk line for unpatched xl 4.20 that rustbk serves.
tap_disk() { echo "format=raw, vdev=$1, access=rw, backendtype=tap, script=rustbk, target=$2"; }

check_xen420() {
  local v
  v=$(xl info 2>/dev/null | awk '/^xen_version/ {print $3}')
  case "$v" in
    4.20.*) pass "Xen $v, trixie's unpatched xl (xen-utils-4.20 $(cat /etc/e2e/xen-version))" ;;
    *) fail "xl info says Xen '$v', not 4.20"; return 1 ;;
  esac
}

# check_tap_backend DOMID DEVID PARAMS: libxl put the disk under backend/vbd3 (and not under
# backend/vbd) with type vbd3, PARAMS and rustbk's script, the frontend points there, and the
# backend is Connected.
check_tap_backend() {
  local be=$VBD3/$1/$2 t p st sc fb
  t=$(xs_or - $be/type); p=$(xs_or - $be/params); st=$(xs_or - $be/state)
  sc=$(xs_or - $be/script); fb=$(xs_or - /local/domain/$1/device/vbd/$2/backend)
  if [ "$t" = vbd3 ] && [ "$p" = "$3" ] && [ "$st" = 4 ] && [ "$fb" = $be ] && [ "${sc##*/}" = rustbk ]; then
    pass "vbd3 $2: $be type=$t params=$p script=$sc state=4, the frontend's backend"
  else
    fail "vbd3 $2: type=$t params=$p script=$sc state=$st frontend's backend=$fb (want vbd3, $3, .../rustbk, 4, $be)"
  fi
  xenstore-exists /local/domain/0/backend/vbd/$1/$2 2>/dev/null && fail "a backend/vbd node for $2 as well"
  return 0
}

# What the guest's blkfront and rustbk negotiated on a vbd3 disk, from xenstore.
show_tap_features() {
  local fe=/local/domain/$1/device/vbd/$2 be=$VBD3/$1/$2
  info "vbd3 $2 negotiated: ring-page-order=$(xs_or - $fe/ring-page-order)($(xs_or - $be/max-ring-page-order))" \
    "queues=$(xs_or 1 $fe/multi-queue-num-queues)($(xs_or - $be/multi-queue-max-queues))" \
    "persistent=$(xs_or - $fe/feature-persistent)/$(xs_or - $be/feature-persistent)" \
    "indirect=$(xs_or - $be/feature-max-indirect-segments) sectors=$(xs_or - $be/sectors) sector-size=$(xs_or - $be/sector-size)"
}

# The guest, g3, with a raw and a qcow2 tap disk.
phase_tap_create() {
  local domid t0
  make_image /data/tap.img 16 RUSTBK-E2E-HOT
  make_qcow2 /data/tap.qcow2 16 RUSTBK-E2E-HOT
  guest_cfg g3 "$(tap_disk xvda /data/tap.img)" "$(tap_disk xvdb qcow2:/data/tap.qcow2)"
  guest_use g3
  t0=$(up)
  if xl create /etc/xen/g3.cfg > /tmp/create.out 2>&1; then
    pass "unpatched xl create g3 with backendtype=tap, script=rustbk disks (raw, and qcow2: in the target)"
    info "xl create returned after $(since $t0)s"
  else
    fail "xl create g3 with backendtype=tap disks"; cat /tmp/create.out; return 1
  fi
  wait_guest "G-EVENT hot-written xvda" 300 || { fail "the guest did not write to its raw tap disk xvda"; return 1; }
  info "xl create to the guest's verified I/O on xvda: $(since $t0)s"
  wait_guest "G-EVENT hot-written xvdb" 120 || fail "the guest did not write to its qcow2 tap disk xvdb"
  domid=$(xl domid g3)
  check_tap_backend "$domid" 51712 aio:/data/tap.img
  check_tap_backend "$domid" 51728 aio:qcow2:/data/tap.qcow2
  show_tap_features "$domid" 51712
  grep -m2 'vbd3' /var/log/rustbk.log | while read -r l; do info "rustbk: $l"; done
}

# xl block-attach, block-list and block-detach of a qcow2 tap disk while g3 runs.
phase_tap_hotplug() {
  local domid be row
  domid=$(xl domid g3)
  be=$VBD3/$domid/51744
  make_qcow2 /data/tap-hot.qcow2 16 RUSTBK-E2E-HOT
  guest_mark
  if timeout 90 xl block-attach g3 "$(tap_disk xvdc qcow2:/data/tap-hot.qcow2)" > /tmp/attach.out 2>&1; then
    pass "unpatched xl block-attach of a backendtype=tap, script=rustbk qcow2 disk"
  else fail "xl block-attach of a tap disk"; cat /tmp/attach.out; return 1; fi
  wait_guest "G-EVENT hot-written xvdc" 120 || { fail "the guest did not use the attached tap disk"; return 1; }
  check_tap_backend "$domid" 51744 aio:qcow2:/data/tap-hot.qcow2
  # xl block-list: Vdev BE handle state evt-ch ring-ref BE-path.
  row=$(xl block-list g3 2>/dev/null | awk '$1 == 51744')
  info "xl block-list: $row"
  echo "$row" | awk -v be=$be '$4 == 4 && $7 == be {ok=1} END {exit !ok}' \
    && pass "xl block-list shows xvdc (51744) connected at $be" || fail "xl block-list does not show xvdc connected at $be: '$row'"
  guest_mark
  if timeout 90 xl block-detach g3 xvdc > /tmp/detach.out 2>&1; then pass "xl block-detach of the tap disk"; else
    fail "xl block-detach of the tap disk"; cat /tmp/detach.out; fi
  wait_guest "G-EVENT gone xvdc" 60 && pass "the guest saw xvdc go away" || fail "xvdc still in the guest"
  xl block-list g3 2>&1 | awk '$1 == 51744' | grep -q . && fail "xvdc still listed by xl block-list" \
    || pass "xl block-list no longer lists xvdc"
  xenstore-exists $be 2>/dev/null && fail "$be left after block-detach"
  qcow2_to_raw /data/tap-hot.qcow2 /data/tap-hot.raw
  check_hot_image /data/tap-hot.raw "$(guest_md5 'hot-written xvdc')"
  rm -f /data/tap-hot.raw
}

# xl is trixie's own: it does not know the patched xl's `backendtype=rustbk`.
check_unpatched_xl() {
  if timeout 60 xl block-attach g3 "format=raw, vdev=xvdd, access=rw, backendtype=rustbk, target=/data/tap.img" \
      > /tmp/unpatched.out 2>&1; then
    fail "xl accepted backendtype=rustbk: this is not the unpatched xl"
    timeout 60 xl block-detach g3 xvdd > /dev/null 2>&1
  elif grep -q 'backendtype' /tmp/unpatched.out; then
    pass "xl refuses backendtype=rustbk (unpatched): $(grep -m1 backendtype /tmp/unpatched.out)"
  else
    fail "xl block-attach with backendtype=rustbk failed without naming backendtype"; cat /tmp/unpatched.out
  fi
}

# A tap disk that names no script is tapback's (libxl runs Xen's block-tap, which needs blktap3,
# not packaged in trixie): the attach fails, rustbk leaves the disk alone (its state is never
# past Initialising, and rustbk's log never names it) and the guest never sees it.
phase_tap_no_script() {
  local domid=$(xl domid g3) be rc=0 t0=$(up) st
  be=$VBD3/$domid/51776
  make_image /data/tapback.img 16 RUSTBK-E2E-HOT
  guest_mark
  timeout 90 xl block-attach g3 "format=raw, vdev=xvde, access=rw, backendtype=tap, target=/data/tapback.img" \
    > /tmp/tapback.out 2>&1 || rc=$?
  st=$(xs_or - $be/state)
  info "xl block-attach of a tap disk without script=: exit $rc after $(since $t0)s, backend state $st"
  grep 'libxl: error' /tmp/tapback.out | head -n 3 | while read -r l; do info "xl: $l"; done
  [ $rc -ne 0 ] && pass "xl block-attach of a tap disk for tapback (no script=) fails: no blktap3 in dom0" \
    || fail "xl block-attach of a tap disk for tapback succeeded"
  case "$st" in 2 | 3 | 4) fail "the tapback disk's backend reached state $st: something served it" ;;
    *) pass "the tapback disk's backend stayed in state $st (rustbk did not claim it)" ;; esac
  grep -qE 'devid=51776|/51776' /var/log/rustbk.log && fail "rustbk's log names the tapback disk: $(grep -m1 51776 /var/log/rustbk.log)"
  rc=0
  timeout 90 xl block-detach g3 xvde > /tmp/detach.out 2>&1 || rc=$?
  info "xl block-detach of the failed tapback disk: exit $rc"
  grep -E 'libxl: error|failed' /tmp/detach.out | head -n 3 | while read -r l; do info "xl: $l"; done
  xenstore-exists $be 2>/dev/null && { info "$be left after block-detach (removed by hand)"; xenstore-rm $be; }
  tail -n +$GMARK $GLOG 2>/dev/null | grep -q "first-io xvde" && fail "the guest saw the tapback disk"
  rm -f /data/tapback.img
  return 0
}

# The daemon restarted with fixed buffers (restart_with_setting fixed_buffers true), then one more raw tap
# disk (xvdf, RUSTBK-E2E-VERIFY): the guest's fio writes 64 MiB of 4 KiB blocks with checksums
# and reads every one back; dom0 reports how many requests went through fixed buffers on Linux
# 6.12, where the kernel registers gntdev-mapped pages.
phase_tap_fixed() {
  local domid=$(xl domid g3) used
  restart_with_setting $domid fixed_buffers true || return 1
  make_image /data/tap-fixed.img 80 RUSTBK-E2E-VERIFY
  guest_mark
  timeout 90 xl block-attach g3 "$(tap_disk xvdf /data/tap-fixed.img)" > /tmp/attach.out 2>&1 \
    || { fail "xl block-attach of a tap disk after the restart"; cat /tmp/attach.out; return 1; }
  wait_guest "G-EVENT verified xvdf" 600 || fail "the guest did not verify the tap disk attached after the restart"
  report_fixed $domid 51792
  used=$(fixed_requests $domid 51792)
  [ "$used" -gt 1000 ] && pass "$used of the verified disk's requests went through fixed buffers" \
    || fail "only $used requests of the verified disk went through fixed buffers on $(uname -r)"
  timeout 90 xl block-detach g3 xvdf > /dev/null 2>&1 || fail "xl block-detach of the tap disk attached after the restart"
  rm -f /data/tap-fixed.img
}

# xl shutdown; the vbd3 nodes go, and the images hold what the guest wrote.
phase_tap_shutdown() {
  local i=0
  timeout 120 xl shutdown -w g3 > /tmp/shutdown.out 2>&1 && pass "xl shutdown g3" \
    || { fail "xl shutdown g3"; cat /tmp/shutdown.out; xl destroy g3; }
  while xenstore-ls $VBD3 2>/dev/null | grep -q . && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
  xenstore-ls $VBD3 2>/dev/null | grep -q . \
    && fail "backend/vbd3 nodes left 20 s after shutdown: $(xenstore-ls $VBD3 | head -5)"
  check_hot_image /data/tap.img "$(guest_md5 'hot-written xvda')"
  qcow2_to_raw /data/tap.qcow2 /data/tap-qcow2.raw
  check_hot_image /data/tap-qcow2.raw "$(guest_md5 'hot-written xvdb')"
  rm -f /data/tap-qcow2.raw
}

phases_tap420() {
  check_xen420 || return
  start_rustbk
  if phase_tap_create; then
    phase_tap_hotplug
    check_unpatched_xl
    BAD_GUEST=g3 BAD_KIND=vbd3
    bad_attach xvdd 51760 "$(tap_disk xvdd /data/missing.img)" "Cannot open /data/missing.img" \
      "a tap disk whose image is missing"
    phase_tap_no_script
    phase_tap_fixed
  fi
  xl domid g3 >/dev/null 2>&1 && phase_tap_shutdown
  stop_rustbk
}

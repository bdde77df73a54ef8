#!/usr/bin/env bash
# Image format performance: `qemu-img bench` against `rustbk img bench` (the same flags, engine
# only) and against `rustbk demo` (the whole emulated guest path), on the same machine, in the
# same run, on the same image files. QD32, 4 KiB, cache=none (O_DIRECT), io_uring.
#
# FORMAT picks the format: qcow2 (default), vpc (a dynamic VHD) or vmdk (monolithicSparse);
# `scripts/bench-img.sh vpc` works too. Cases: read and overwrite on a fully allocated 1 GiB
# image; allocating (sequential) writes on a fresh 1 GiB image per run. The tools alternate
# (the one going first alternates too) for ROUNDS rounds and the table shows medians.
# Afterwards one allocating run of each tool under perf stat counts its flushes
# (fdatasync/fsync calls and io_uring FSYNC ops). Then `rustbk img convert` against
# `qemu-img convert` (raw to FORMAT and back) on a 4 GiB half-allocated image.
#
# Environment: ROUNDS (3), COUNT (200000 requests), DEPTH (32), DEMO_SECONDS (10),
# DEMO_FRESH_SIZE (8G: the emulated guest runs for a time, not a count, so its fresh image is
# larger than 1 GiB to keep every write allocating), WORK (a folder for the images; default a
# new folder under /var/tmp, removed at the end), NO_DEMO=1 skips the emulated-guest column,
# NO_CONVERT=1 skips the convert timings, NO_SYNCCOUNT=1 skips the flush counts.
set -euo pipefail
cd "$(dirname "$0")/.."

FORMAT=${1:-${FORMAT:-qcow2}}
case $FORMAT in
  qcow2) CREATE=(-f qcow2) ;;
  vpc) CREATE=(-f vpc -o subformat=dynamic) ;;
  vmdk) CREATE=(-f vmdk -o subformat=monolithicSparse) ;;
  *) echo "FORMAT must be qcow2, vpc or vmdk, not $FORMAT" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-200000}
DEPTH=${DEPTH:-32}
DEMO_SECONDS=${DEMO_SECONDS:-10}
SIZE=1G
DEMO_FRESH_SIZE=${DEMO_FRESH_SIZE:-8G}

for tool in qemu-img qemu-io; do
  command -v "$tool" >/dev/null || { echo "$tool is required (Debian package qemu-utils)" >&2; exit 1; }
done
if [ -z "${NO_SYNCCOUNT:-}" ]; then
  command -v perf >/dev/null || { echo "perf is required (or set NO_SYNCCOUNT=1)" >&2; exit 1; }
fi

echo "== cargo build --release -p rustbk"
cargo build --release -q -p rustbk
RUSTBK=$PWD/target/release/rustbk

if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d /var/tmp/rustbk-bench-img.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
FULL=$WORK/full.$FORMAT
FRESH=$WORK/fresh.$FORMAT
FLAGS=(-f "$FORMAT" -t none -i io_uring -d "$DEPTH" -c "$COUNT" -s 4k)

echo "== images in $WORK"
rm -f "$FULL"
qemu-img create -q "${CREATE[@]}" "$FULL" "$SIZE"
# The whole virtual disk (a VHD's is a little larger than asked: CHS rounding).
VSIZE=$(qemu-img info --output=json -f "$FORMAT" "$FULL" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
qemu-io -f "$FORMAT" -t none -c "write -P 1 0 $VSIZE" "$FULL" >/dev/null

fresh() {
  rm -f "$FRESH"
  qemu-img create -q "${CREATE[@]}" "$FRESH" "${1:-$SIZE}"
}

# IOPS from qemu-img bench's "Run completed in T seconds." line.
qemu_iops() {
  local out secs
  out=$(qemu-img bench "${FLAGS[@]}" "$@")
  secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$out")
  [ -n "$secs" ] || { echo "qemu-img bench printed: $out" >&2; return 1; }
  awk -v c="$COUNT" -v s="$secs" 'BEGIN { printf "%.0f\n", (s > 0 ? c / s : 0) }'
}

# IOPS from rustbk img bench --output=json.
rustbk_iops() {
  "$RUSTBK" img bench --output=json "${FLAGS[@]}" "$@" |
    sed -n 's/^ *"iops": \([0-9.eE+-]*\),\{0,1\}$/\1/p' | awk '{ printf "%.0f\n", $1 }'
}

# IOPS of the emulated guest (`rustbk demo`) on an image.
demo_iops() {
  local image=$1 rw=$2 out
  out=$("$RUSTBK" demo --image "$image" --format "$FORMAT" --overwrite --no-verify --rw "$rw" \
    --bs 4k --qd "$DEPTH" --duration "$DEMO_SECONDS" 2>/dev/null)
  sed -n 's/^ *IOPS *\([0-9]*\) .*/\1/p' <<<"$out"
}

median() {
  tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print 0 } else if (NR % 2) { print v[(NR + 1) / 2] }
    else { printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}

declare -A Q R D

# One measurement of one tool for one case; appends the IOPS to Q/R.
measure() {
  local tool=$1 case=$2 args=() iops
  case $case in
    read) args=("$FULL") ;;
    overwrite) args=(-w "$FULL") ;;
    allocating) fresh; args=(-w "$FRESH") ;;
  esac
  if [ "$tool" = qemu ]; then
    iops=$(qemu_iops "${args[@]}")
    Q[$case]="${Q[$case]:-} $iops"
  else
    iops=$(rustbk_iops "${args[@]}")
    R[$case]="${R[$case]:-} $iops"
  fi
  printf '   %-10s %-7s %8s IOPS\n' "$case" "$tool" "$iops"
}

CASES=(read overwrite allocating)
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS (qemu-img bench vs rustbk img bench, ${FLAGS[*]})"
  for case in "${CASES[@]}"; do
    if [ $((round % 2)) -eq 1 ]; then order=(qemu rustbk); else order=(rustbk qemu); fi
    for tool in "${order[@]}"; do measure "$tool" "$case"; done
  done
done

if [ -z "${NO_DEMO:-}" ]; then
  for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS: rustbk demo (emulated guest), ${DEMO_SECONDS}s each"
    D[read]="${D[read]:-} $(demo_iops "$FULL" read)"
    D[overwrite]="${D[overwrite]:-} $(demo_iops "$FULL" write)"
    # Large enough that DEMO_SECONDS of sequential writes never wrap onto allocated clusters.
    fresh "$DEMO_FRESH_SIZE"
    D[allocating]="${D[allocating]:-} $(demo_iops "$FRESH" write)"
    echo "   read/overwrite/allocating:${D[read]##* } ${D[overwrite]##* } ${D[allocating]##* }"
  done
fi

echo
echo "$FORMAT, 1 GiB, 4 KiB, QD$DEPTH, cache=none, io_uring, $COUNT requests; medians of $ROUNDS"
printf '%-12s | %14s | %18s | %6s | %26s\n' case "qemu-img IOPS" "rustbk engine IOPS" ratio \
  "rustbk via emulated guest"
printf '%s\n' "-------------+----------------+--------------------+--------+---------------------------"
for case in "${CASES[@]}"; do
  q=$(median <<<"${Q[$case]}")
  r=$(median <<<"${R[$case]}")
  d=$( [ -n "${D[$case]:-}" ] && median <<<"${D[$case]}" || echo "-")
  ratio=$(awk -v q="$q" -v r="$r" 'BEGIN { printf "%.2fx", (q > 0 ? r / q : 0) }')
  printf '%-12s | %14s | %18s | %6s | %26s\n' "$case" "$q" "$r" "$ratio" "$d"
done
echo "(all samples: qemu-img read:${Q[read]} overwrite:${Q[overwrite]} allocating:${Q[allocating]};"
echo " rustbk read:${R[read]} overwrite:${R[overwrite]} allocating:${R[allocating]})"

if [ -z "${NO_CONVERT:-}" ]; then
  # A 4 GiB raw image with every other 64 MiB region random (half allocated), then its FORMAT
  # conversion; both tools convert raw -> FORMAT and FORMAT -> raw, cache=none on both sides.
  echo
  echo "== convert: 4 GiB half-allocated image, -t none -T none, $ROUNDS rounds"
  SRC_RAW=$WORK/half.raw
  SRC_IMG=$WORK/half.$FORMAT
  rm -f "$SRC_RAW"
  truncate -s 4G "$SRC_RAW"
  for i in $(seq 0 2 63); do
    head -c 64M /dev/urandom | dd of="$SRC_RAW" bs=1M seek=$((i * 64)) conv=notrunc status=none
  done
  qemu-img convert -f raw -O "$FORMAT" "${CREATE[@]:2}" "$SRC_RAW" "$SRC_IMG"
  declare -A CQ CR
  convert_secs() {
    local tool=$1 from=$2 to=$3 src dst start end
    if [ "$from" = raw ]; then src=$SRC_RAW; else src=$SRC_IMG; fi
    dst=$WORK/out.$to
    local opts=()
    if [ "$to" != raw ]; then opts=("${CREATE[@]:2}"); fi
    rm -f "$dst"
    start=$(date +%s.%N)
    if [ "$tool" = qemu ]; then
      qemu-img convert -t none -T none -f "$from" -O "$to" "${opts[@]}" "$src" "$dst"
    else
      "$RUSTBK" img convert -t none -T none -f "$from" -O "$to" "${opts[@]}" "$src" "$dst"
    fi
    end=$(date +%s.%N)
    qemu-img compare -q "$SRC_RAW" "$dst" || { echo "$tool $from->$to: output differs" >&2; exit 1; }
    rm -f "$dst"
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f\n", e - s }'
  }
  for round in $(seq 1 "$ROUNDS"); do
    for dir in "raw:$FORMAT" "$FORMAT:raw"; do
      if [ $((round % 2)) -eq 1 ]; then order=(qemu rustbk); else order=(rustbk qemu); fi
      for tool in "${order[@]}"; do
        secs=$(convert_secs "$tool" "${dir%%:*}" "${dir##*:}")
        if [ "$tool" = qemu ]; then CQ[$dir]="${CQ[$dir]:-} $secs"; else CR[$dir]="${CR[$dir]:-} $secs"; fi
        printf '   %-12s %-7s %6s s\n' "${dir/:/->}" "$tool" "$secs"
      done
    done
  done
  printf '%-12s | %16s | %14s | %16s\n' convert "qemu-img convert" "rustbk img" "speed-up"
  for dir in "raw:$FORMAT" "$FORMAT:raw"; do
    q=$(tr ' ' '\n' <<<"${CQ[$dir]}" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    r=$(tr ' ' '\n' <<<"${CR[$dir]}" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    printf '%-12s | %14s s | %12s s | %15s\n' "${dir/:/->}" "$q" "$r" \
      "$(awk -v q="$q" -v r="$r" 'BEGIN { printf "%.2fx", (r > 0 ? q / r : 0) }')"
  done
  rm -f "$SRC_RAW" "$SRC_IMG"
fi

if [ -z "${NO_SYNCCOUNT:-}" ]; then
  echo
  echo "== flushes in one allocating run ($COUNT writes, fresh image each): fdatasync/fsync"
  echo "   system calls plus IORING_OP_FSYNC submissions (strace cannot see the latter)"
  for tool in qemu-img rustbk; do
    fresh
    if [ "$tool" = qemu-img ]; then
      cmd=(qemu-img bench "${FLAGS[@]}" -w "$FRESH")
    else
      cmd=("$RUSTBK" img bench "${FLAGS[@]}" -w "$FRESH")
    fi
    perf stat -x, -o "$WORK/sync.$tool" \
      -e syscalls:sys_enter_fdatasync -e syscalls:sys_enter_fsync \
      -e io_uring:io_uring_submit_req --filter 'opcode == 3' -- "${cmd[@]}" >"$WORK/out.$tool"
    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' "$WORK/out.$tool")
    counts=$(awk -F, '/syscalls:|io_uring:/ { sub(/.*:sys_enter_/, "", $3); sub(/io_uring:io_uring_submit_req/, "uring-fsync", $3); printf "%s %s  ", $3, $1 }' "$WORK/sync.$tool")
    printf '   %-9s %s(run %s s)\n' "$tool" "$counts" "$secs"
  done
fi

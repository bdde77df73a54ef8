#!/bin/sh
# Makes a seed corpus for rustbk's image fuzz targets at run time (no image is committed).
#
#   fuzz/seeds.sh vpc DIR    seeds for vhd_open
#   fuzz/seeds.sh vmdk DIR   seeds for vmdk_open
#   fuzz/seeds.sh qcow2 DIR  seeds for qcow2_open
#   fuzz/seeds.sh thin DIR   seeds for thin_metadata (a flag byte, then the metadata)
#
# Needs qemu-img and qemu-io (qemu-utils), thin_restore (thin-provisioning-tools) and python3
# for `thin`, and for vpc and vmdk the rustbk CLI: $RUSTBK, else target/release/rustbk or
# target/debug/rustbk of this checkout (build it with `cargo build -p rustbk`). Every seed is
# at most 128 KiB, so `-max_len=131072` takes each one whole.
set -eu

usage() {
    echo "usage: $0 vpc|vmdk|qcow2|thin DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
fmt=$1
case $fmt in
vpc | vmdk | qcow2 | thin) ;;
*) usage ;;
esac
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
rustbk=${RUSTBK:-}
if [ -z "$rustbk" ]; then
    for b in "$root/target/release/rustbk" "$root/target/debug/rustbk"; do
        [ -x "$b" ] && rustbk=$b && break
    done
fi
case $fmt in
vpc | vmdk)
    [ -n "$rustbk" ] || { echo "no rustbk binary: cargo build -p rustbk, or set RUSTBK" >&2; exit 1; }
    ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# seed NAME FILE: copies FILE into the corpus, refusing anything over 128 KiB.
seed() {
    size=$(stat -c %s "$2")
    if [ "$size" -gt 131072 ]; then
        echo "seed $1 is $size bytes, over 128 KiB" >&2
        exit 1
    fi
    cp "$2" "$out/$1"
}

# write FMT FILE ARGS...: qemu-io writes of a pattern.
write() {
    f=$1
    file=$2
    shift 2
    for cmd in "$@"; do
        qemu-io -f "$f" -c "$cmd" "$file" >/dev/null
    done
}

vpc_seeds() {
    qemu-img create -q -f vpc -o subformat=dynamic q-dyn-1m.vhd 1M
    qemu-img create -q -f vpc -o subformat=dynamic,force_size=on q-dyn-forced.vhd 3M
    qemu-img create -q -f vpc -o subformat=fixed q-fixed-64k.vhd 64k
    qemu-img create -q -f vpc -o subformat=fixed,force_size=on q-fixed-forced.vhd 32k
    write vpc q-fixed-64k.vhd "write -P 0xab 0 4k"
    for b in 512 4096 16384; do
        "$rustbk" img create -q -f vpc -o block_size=$b r-dyn-$b.vhd 1M
        cp r-dyn-$b.vhd r-dyn-$b-data.vhd
        write vpc r-dyn-$b-data.vhd "write -P 0xab 0 64k" "write -P 0xcd 960k 4k"
    done
    "$rustbk" img create -q -f vpc -o subformat=fixed r-fixed.vhd 64k
    # qemu's 2 MiB blocks: one 4 KiB write makes a 2 MiB file, so the data seed is the image
    # cut to its metadata, bitmap and first 32 KiB, then its footer (open refuses the block).
    cp q-dyn-1m.vhd q-dyn-data.vhd
    write vpc q-dyn-data.vhd "write -P 0xab 0 4k"
    head -c 65536 q-dyn-data.vhd >q-dyn-data-cut.vhd
    tail -c 512 q-dyn-data.vhd >>q-dyn-data-cut.vhd
    # Differencing disks as rustbk makes them: parent "base.vhd" (absent while fuzzing), and a
    # child whose parent is named image.vhd, the fuzz target's own file name (a loop).
    "$rustbk" img create -q -f vpc -o block_size=4096 base.vhd 1M
    "$rustbk" img create -q -f vpc -o block_size=4096 -b base.vhd -F vpc r-diff.vhd
    write vpc r-diff.vhd "write -P 0xab 4k 8k"
    mkdir loop
    "$rustbk" img create -q -f vpc -o block_size=512 loop/image.vhd 1M
    "$rustbk" img create -q -f vpc -o block_size=512 -b image.vhd -F vpc loop/child.vhd
    for f in q-dyn-1m q-dyn-forced q-fixed-64k q-fixed-forced r-dyn-512 r-dyn-4096 \
        r-dyn-16384 r-dyn-512-data r-dyn-4096-data r-dyn-16384-data r-fixed q-dyn-data-cut \
        r-diff; do
        seed $f.vhd $f.vhd
    done
    seed r-diff-loop.vhd loop/child.vhd
}

vmdk_seeds() {
    for s in monolithicSparse streamOptimized twoGbMaxExtentSparse monolithicFlat; do
        qemu-img create -q -f vmdk -o subformat=$s q-$s.vmdk 1M
    done
    qemu-img create -q -f vmdk -o subformat=monolithicSparse,compat6=on q-v6.vmdk 1M
    qemu-img create -q -f vmdk -o subformat=monolithicSparse,zeroed_grain=on q-zg.vmdk 1M
    for s in monolithicSparse streamOptimized; do
        cp q-$s.vmdk q-$s-data.vmdk
        write vmdk q-$s-data.vmdk "write -P 0xab 0 64k"
    done
    write vmdk q-zg.vmdk "write -z 0 64k"
    "$rustbk" img create -q -f vmdk r-sparse.vmdk 1M
    "$rustbk" img create -q -f vmdk -o subformat=streamOptimized r-stream.vmdk 1M
    "$rustbk" img create -q -f vmdk -b r-sparse.vmdk -F vmdk r-child.vmdk
    for f in q-monolithicSparse q-streamOptimized q-twoGbMaxExtentSparse q-monolithicFlat \
        q-v6 q-zg q-monolithicSparse-data q-streamOptimized-data r-sparse r-stream r-child; do
        seed $f.vmdk $f.vmdk
    done
    seed q-twoGbMaxExtentSparse-s001.vmdk q-twoGbMaxExtentSparse-s001.vmdk
    # A flat descriptor whose extent is the target's own file, image.vmdk: opens and reads.
    sed 's/"q-monolithicFlat-flat.vmdk"/"image.vmdk"/' q-monolithicFlat.vmdk >self-flat.vmdk
    seed q-flat-self.vmdk self-flat.vmdk
}

qcow2_seeds() {
    for c in 512 4096 16384; do
        qemu-img create -q -f qcow2 -o cluster_size=$c q-$c.qcow2 1M
        cp q-$c.qcow2 q-$c-data.qcow2
        write qcow2 q-$c-data.qcow2 "write -P 0xab 0 8k" "write -P 0xcd 512k 4k"
    done
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 q-v2.qcow2 1M
    write qcow2 q-v2.qcow2 "write -P 0xab 0 8k"
    qemu-img convert -c -O qcow2 -o cluster_size=4096 q-4096-data.qcow2 q-compressed.qcow2
    for f in q-512 q-4096 q-16384 q-512-data q-4096-data q-16384-data q-v2 q-compressed; do
        seed $f.qcow2 $f.qcow2
    done
}

# thin_xml NAME DEVICES MAPPINGS: a thin_dump document of DEVICES devices sharing MAPPINGS
# single mappings (every third one a range).
thin_xml() {
    python3 - "$2" "$3" >"$1" <<'PY'
import sys
devs, maps = int(sys.argv[1]), int(sys.argv[2])
print('<superblock uuid="" time="1" transaction="2" flags="0" version="2" '
      'data_block_size="128" nr_data_blocks="4096">')
for d in range(devs):
    print(f'<device dev_id="{d + 1}" mapped_blocks="{maps}" transaction="{d}" '
          f'creation_time="{d}" snap_time="1">')
    for m in range(maps):
        if m % 3 == 0:
            print(f'<range_mapping origin_begin="{m * 10}" data_begin="{m * 2}" length="2" time="0"/>')
        else:
            print(f'<single_mapping origin_block="{m * 10 + 5}" data_block="{m * 2 + 1}" time="1"/>')
    print('</device>')
print('</superblock>')
PY
}

thin_seeds() {
    thin_xml small.xml 2 4
    thin_xml wide.xml 1 600
    thin_xml many.xml 8 20
    for x in small wide many; do
        truncate -s 256k $x.meta
        thin_restore -q -i $x.xml -o $x.meta
        # Cut after the last block holding anything (the target pads it back).
        python3 - $x.meta <<'PY'
import sys
path = sys.argv[1]
d = open(path, 'rb').read()
B = 4096
n = max(i for i in range(len(d) // B) if any(d[i * B:(i + 1) * B])) + 1
open(path, 'wb').write(d[:n * B])
PY
        for flag in 0 1; do
            printf "\\$flag" >$x-$flag.seed
            cat $x.meta >>$x-$flag.seed
            seed thin-$x-$flag $x-$flag.seed
        done
    done
}

case $fmt in
vpc) vpc_seeds ;;
vmdk) vmdk_seeds ;;
qcow2) qcow2_seeds ;;
thin) thin_seeds ;;
*) usage ;;
esac
ls -l "$out"

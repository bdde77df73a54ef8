#!/usr/bin/env bash
# Builds the patched libxl, libxlutil and xl (or finds them in the cache: see build.sh), then
# compiles test/disk_spec_test.c against that build and runs it. Needs no Xen: the test parses
# disk specs with libxlutil and runs libxl's backend choice and rustbk params code on them.
#
# Usage: tools/libxl/test.sh            (XEN_TOOLS_DIR=<cache dir> skips build.sh)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${XEN_TOOLS_DIR:-$("$HERE/build.sh")}
SRC=$OUT/src
LIBS=$SRC/tools/libs
[ -f "$LIBS/light/libxenlight.a" ] && [ -f "$LIBS/util/libxlutil.a" ] ||
  { echo "test: no built libxenlight.a/libxlutil.a under $LIBS" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# libxenlight.a is linked statically so that the test reaches libxl's internal (hidden)
# functions; the libraries under it are the shared ones of the same build.
DEPS=(ctrl guest store toollog evtchn hypfs toolcore call foreignmemory devicemodel gnttab)
LINK=()
for d in "${DEPS[@]}"; do
  LINK+=("-L$LIBS/$d" "-Wl,-rpath,$LIBS/$d")
done
LINK+=(-lxenctrl -lxenguest -lxenstore -lxentoollog -lxenevtchn -lxenhypfs -lxentoolcore
  -lxencall -lxenforeignmemory -lxendevicemodel -lxengnttab -lyajl -luuid -lrt -lutil -pthread)

gcc -std=gnu99 -O1 -Wall -Werror -D__XEN_TOOLS__ \
  -include "$SRC/tools/config.h" -I"$SRC/tools/include" -I"$LIBS/light" -I"$LIBS/util" \
  -o "$WORK/disk_spec_test" "$HERE/test/disk_spec_test.c" \
  "$LIBS/util/libxlutil.a" "$LIBS/light/libxenlight.a" "${LINK[@]}"

touch "$WORK/existing.img"
"$WORK/disk_spec_test" "$WORK/existing.img"

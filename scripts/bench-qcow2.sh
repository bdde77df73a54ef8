#!/usr/bin/env bash
# qcow2 performance against qemu-img: `scripts/bench-img.sh` with FORMAT=qcow2 (see there).
exec "$(dirname "$0")/bench-img.sh" qcow2

#!/usr/bin/env bash
# The soak test: `rustbk soak` runs `rustbk daemon` serving 32 emulated guests (verifying mixed
# workloads with flushes) while workers are SIGKILLed, guests reboot and disks are hot-attached
# and detached, then checks errors, mismatches and that fds, threads, RSS and grant mappings
# stayed flat. Arguments go to `rustbk soak`: none for the 10-minute run, `--short` for CI
# (90 s); `rustbk soak --help` lists the rest. PROFILE=release builds an optimised rustbk.
# Exits non-zero if the soak fails.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-dev}"
cargo build -q --profile "$profile" -p rustbk
case "$profile" in
  dev) dir=debug ;;
  *) dir="$profile" ;;
esac
exec "target/$dir/rustbk" soak "$@"

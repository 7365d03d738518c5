#!/bin/sh
# Runs a shim client as another user (nobody) against a ledger file that root created with mode
# 0644, the case of a ledger made by another user of the container: the client must be refused
# every allocation with a clear line, never crash. Exits 77 (skipped) unless run as root with
# setpriv available.
# Usage: as_other_user.sh LEDGER PRELOAD CLIENT ARGS...
set -eu
ledger=$1
preload=$2
shift 2
[ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 || exit 77
rm -f "$ledger"
: >"$ledger"
chmod 0644 "$ledger"
readonly nobody=65534
# Only the client gets the preload: setpriv and env run without it.
exec setpriv --reuid=$nobody --regid=$nobody --clear-groups \
  env LD_PRELOAD="$preload" CUDA_DEVICE_MEMORY_SHARED_CACHE="$ledger" "$@"

#!/bin/sh
# Runs a shim client as a container does: in a pid namespace of its own, with a /proc of that
# namespace (so NSpid shows one level and getpid() is small), while the fake NVML lists host pids
# (FAKE_NVML_PID_OFFSET) and a neighbour under the client's own getpid(). Exits 77 (skipped),
# with the reason, when this machine does not permit `unshare --pid --fork --mount-proc`.
# With --host-proc the namespace keeps the host's /proc, where NSpid shows the host's pid.
# Usage: in_pid_namespace.sh [--host-proc] CLIENT ARGS...   (the environment carries LD_PRELOAD)
set -eu
proc=--mount-proc
if [ "${1:-}" = --host-proc ]; then proc=; shift; fi
if ! why=$(env -u LD_PRELOAD unshare --pid --fork $proc true 2>&1); then
  echo "skipped: unshare --pid --fork $proc is not permitted here: $why"
  exit 77
fi
preload=${LD_PRELOAD:-}
# The preload reaches only the client, which runs as pid 2 under a shell as pid 1 (a container's
# init; LeakSanitizer cannot run as pid 1).
exec env -u LD_PRELOAD unshare --pid --fork $proc sh -c \
  'env LD_PRELOAD="$0" "$@"' "$preload" "$@"

#!/bin/sh
# Runs a shim client as a container does: in a pid namespace of its own, with a /proc of that
# namespace (so NSpid shows one level and getpid() is small), while the fake NVML lists host pids
# (FAKE_NVML_PID_OFFSET) and a neighbour under the client's own getpid(). Exits 77 (skipped),
# with the reason, when this machine does not permit `unshare --pid --fork --mount-proc`.
# Usage: in_pid_namespace.sh CLIENT ARGS...   (the environment carries LD_PRELOAD and the rest)
set -eu
if ! why=$(env -u LD_PRELOAD unshare --pid --fork --mount-proc true 2>&1); then
  echo "skipped: unshare --pid --fork --mount-proc is not permitted here: $why"
  exit 77
fi
preload=${LD_PRELOAD:-}
# The preload reaches only the client, which runs as pid 2 under a shell as pid 1 (a container's
# init; LeakSanitizer cannot run as pid 1).
exec env -u LD_PRELOAD unshare --pid --fork --mount-proc sh -c \
  'env LD_PRELOAD="$0" "$@"' "$preload" "$@"

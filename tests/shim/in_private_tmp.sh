#!/bin/sh
# Runs a shim client with a /tmp of its own, as a container has (an empty tmpfs; with
# --read-only, one that cannot be written). Exits 77 (skipped), with the reason, when this machine
# does not permit `unshare --mount` and mounting a tmpfs.
# Usage: in_private_tmp.sh [--read-only] CLIENT ARGS...   (the environment carries LD_PRELOAD)
set -eu
opts=mode=1777
if [ "${1:-}" = --read-only ]; then opts=ro,mode=0755; shift; fi
if ! why=$(env -u LD_PRELOAD unshare --mount --fork sh -c "mount -t tmpfs -o $opts tmpfs /tmp" 2>&1); then
  echo "skipped: a private /tmp (unshare --mount, mount -t tmpfs) is not permitted here: $why"
  exit 77
fi
# A private /tmp hides what lies under the real one: a build tree there cannot be run.
for path in "$1" $(echo "${LD_PRELOAD:-}:${LD_LIBRARY_PATH:-}" | tr ':' ' '); do
  case "$path" in
    /tmp/*) echo "skipped: $path lies under /tmp, which the private /tmp would hide"; exit 77 ;;
  esac
done
preload=${LD_PRELOAD:-}
# The preload reaches only the client, not unshare, mount or sh.
exec env -u LD_PRELOAD unshare --mount --fork sh -c \
  'mount -t tmpfs -o "$1" tmpfs /tmp && shift && exec env LD_PRELOAD="$0" "$@"' \
  "$preload" "$opts" "$@"

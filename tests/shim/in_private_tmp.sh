#!/bin/sh
# Runs a shim client with a /tmp of its own, as a container has (an empty tmpfs; with
# --read-only, one that cannot be written). Exits 77 (skipped), with the reason, when this machine
# does not permit `unshare --mount` and mounting a tmpfs.
# A build tree that lies under the real /tmp stays reachable: its top folder is bound back into
# the private /tmp, next to nothing else.
# Usage: in_private_tmp.sh [--read-only] CLIENT ARGS...   (the environment carries LD_PRELOAD)
set -eu
ro=""
if [ "${1:-}" = --read-only ]; then ro=1; shift; fi
if ! why=$(env -u LD_PRELOAD unshare --mount --fork sh -c "mount -t tmpfs -o mode=1777 tmpfs /tmp" 2>&1); then
  echo "skipped: a private /tmp (unshare --mount, mount -t tmpfs) is not permitted here: $why"
  exit 77
fi
# The top folders under /tmp of the client, the preloaded shim and the fake driver's libraries.
tops=""
for path in "$1" $(echo "${LD_PRELOAD:-}:${LD_LIBRARY_PATH:-}" | tr ':' ' '); do
  case "$path" in
    /tmp/?*)
      top=${path#/tmp/}
      top=${top%%/*}
      case " $tops " in *" $top "*) ;; *) tops="$tops $top" ;; esac ;;
  esac
done
preload=${LD_PRELOAD:-}
# In the new mount namespace: keep the real /tmp at /mnt (a mount there is private to it), mount
# the tmpfs, bind the tops back, then make the tmpfs read-only if asked. The preload reaches only
# the client.
exec env -u LD_PRELOAD unshare --mount --fork sh -c '
  set -e
  preload=$1 ro=$2 tops=$3; shift 3
  if [ -n "$tops" ]; then
    stash=/mnt
    mkdir -p "$stash"
    mount --bind /tmp "$stash"
  fi
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  for top in $tops; do
    mkdir -p "/tmp/$top"
    mount --bind "$stash/$top" "/tmp/$top"
  done
  [ -z "$ro" ] || mount -o remount,ro,mode=0755 /tmp
  exec env LD_PRELOAD="$preload" "$@"' sh "$preload" "$ro" "$tops" "$@"

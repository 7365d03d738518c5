#!/usr/bin/env bash
# Builds the gpuslice image (image/Containerfile) without a daemon or a registry:
#   1. the base image, made from Debian's packages with mmdebstrap (minbase, bookworm, with
#      debian:bookworm-slim's path excludes) and imported with podman, unless an image made
#      with the same options and less than a week old is already in the store;
#   2. `buildah bud --isolation chroot --storage-driver vfs --layers`, the builder's stages tagged
#      too, so their layers (the packages, then the compiled sources) survive pruning; apt's,
#      pip's and ccache's directories are cache mounts, so a rebuild after a source change
#      recompiles only what changed.
# Usage: scripts/image.sh [--print-tag | --prepare]
#   --print-tag   print the tag the build produces (gpuslice/gpuslice:<CMake project version>)
#   --prepare     only what needs the network: the base, the CUDA headers' wheels and the
#                 builder's packages (scripts/test.sh runs it while it compiles)
# Environment: GPUSLICE_IMAGE_TAG overrides the tag; GPUSLICE_IMAGE_BASE names an existing base
# image to use instead of making one (e.g. docker.io/library/debian:bookworm-slim).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^project(gpuslice VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || { echo "image.sh: CMakeLists.txt: expected 'project(gpuslice VERSION x.y.z'" >&2; exit 1; }
tag=${GPUSLICE_IMAGE_TAG:-gpuslice/gpuslice:$version}
prepare=0
if [ "${1:-}" = "--print-tag" ]; then
  echo "$tag"
  exit 0
elif [ "${1:-}" = "--prepare" ]; then
  prepare=1
elif [ $# -gt 0 ]; then
  echo "image.sh: unknown argument '$1': expected none, --print-tag or --prepare" >&2
  exit 2
fi

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null ||
    { echo "image.sh: $tool is not installed: expected it from scripts/deps.sh" >&2; exit 1; }
done
STORE=(--storage-driver vfs)
start=$SECONDS

# ---- 1. the base image ---------------------------------------------------------------------
SUITE=bookworm
SOURCES=("deb http://deb.debian.org/debian $SUITE main"
         "deb http://deb.debian.org/debian $SUITE-updates main"
         "deb http://deb.debian.org/debian-security $SUITE-security main")
# As Debian's -slim images: no manuals, documentation (copyright kept) or translations.
SLIM=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
      --dpkgopt='path-exclude=/usr/share/groff/*')
MMDEBSTRAP=(mmdebstrap --variant=minbase --format=tar "${SLIM[@]}" "$SUITE")
MAX_BASE_AGE_S=$((7 * 24 * 3600))  # then the base is made again, with Debian's updates

if [ -n "${GPUSLICE_IMAGE_BASE:-}" ]; then
  base=$GPUSLICE_IMAGE_BASE
else
  key=$(printf '%s\n' "${MMDEBSTRAP[@]}" "${SOURCES[@]}" | sha256sum | cut -c1-12)
  base=localhost/gpuslice-base/debian:$SUITE-slim-$key
  created=$(podman "${STORE[@]}" image inspect --format '{{.Created.Unix}}' "$base" 2>/dev/null || true)
  if [ -n "$created" ] && [ $(($(date +%s) - created)) -lt $MAX_BASE_AGE_S ]; then
    echo "image.sh: base $base (made $(date -u -d "@$created" +%FT%TZ)) is in the store"
  else
    echo "image.sh: making the base $base with mmdebstrap"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "${MMDEBSTRAP[@]}" "$tmp/base.tar" "${SOURCES[@]}" >"$tmp/mmdebstrap.log" 2>&1 ||
      { tail -n 30 "$tmp/mmdebstrap.log"; echo "image.sh: mmdebstrap failed (above)" >&2; exit 1; }
    podman "${STORE[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$base" >/dev/null
    rm -rf "$tmp"
    echo "image.sh: base made in $((SECONDS - start))s"
  fi
fi

# ---- 2. the CUDA headers' wheels, with this machine's pip (its index and trust), hash-checked --
mkdir -p image/wheels
python3 -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
  -r image/cuda-headers.txt -d image/wheels

# ---- 3. the image ----------------------------------------------------------------------------
source_url=$(git config --get remote.origin.url 2>/dev/null || echo unknown)
BUD=(buildah "${STORE[@]}" bud --isolation chroot --layers --force-rm -f image/Containerfile
     --build-arg "BUILDER_BASE=$base" --build-arg "RUNTIME_BASE=$base"
     --build-arg "BUILD_PACKAGES=$(scripts/deps.sh --image-build-packages)")
if [ "$prepare" = 1 ]; then
  "${BUD[@]}" --target packages -t localhost/gpuslice-build-cache:packages .
  echo "image.sh: base, wheels and the builder's packages ready in ${SECONDS}s"
  exit 0
fi
build_start=$SECONDS
"${BUD[@]}" --target builder -t localhost/gpuslice-build-cache:latest .
"${BUD[@]}" --build-arg "VERSION=$version" --build-arg "SOURCE=$source_url" -t "$tag" .
build_s=$((SECONDS - build_start))

# Layers of earlier builds that nothing names any more (vfs copies whole trees: they add up).
for _ in 1 2 3 4 5 6; do
  [ -n "$(buildah "${STORE[@]}" rmi --prune 2>/dev/null)" ] || break
done

size=$(buildah "${STORE[@]}" images --format '{{.Size}}' "$tag" | head -n 1)
echo "image.sh: built $tag ($size) in ${build_s}s, ${SECONDS}s in all"

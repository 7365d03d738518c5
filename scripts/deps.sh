#!/usr/bin/env bash
# Installs what building and testing gpuslice needs on a fresh Debian 12 machine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

APT_PACKAGES=(cmake ninja-build g++ clang libclang-rt-14-dev catch2 libfmt-dev libbenchmark-dev
              libcpp-httplib-dev nlohmann-json3-dev
              libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev openssl
              libyaml-cpp-dev)
# The image (image/Containerfile, built by scripts/image.sh): the C++ packages its builder stage
# installs for the programs and the shim (python3: the shim's CMake asks for it, and it unpacks
# the CUDA headers' wheels), and the daemonless tools that build and run it.
# `deps.sh --image-build-packages` prints the first list for the Containerfile, installs nothing.
IMAGE_BUILD_PACKAGES=(cmake ninja-build g++ pkg-config ccache python3 libfmt-dev
                      libcpp-httplib-dev nlohmann-json3-dev libgrpc++-dev libprotobuf-dev
                      protobuf-compiler protobuf-compiler-grpc libssl-dev libyaml-cpp-dev)
if [ "${1:-}" = "--image-build-packages" ]; then
  echo "${IMAGE_BUILD_PACKAGES[*]}"
  exit 0
fi
APT_PACKAGES+=(pkg-config ccache buildah podman mmdebstrap)
# `kubectl kustomize` renders examples/deploy's overlays (tests/k8s/test_deploy.py). It needs
# kubectl 1.21 or later (kustomize v4+): Debian 12 has none (its kubernetes-client is 1.20), so
# it is not installed here; this project's build machines come with one.
command -v kubectl >/dev/null ||
  echo "deps: kubectl not found: tests/k8s/test_deploy.py needs kubectl 1.21 or later (kustomize v4+)"
PY_PACKAGES=(scikit-build-core pybind11 nvidia-nvml-dev numpy pytest hypothesis rich matplotlib
             grpcio grpcio-tools prometheus_client pyyaml scipy)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# Installing as root into the interpreter is intended here (a build machine or container).
export PIP_ROOT_USER_ACTION=ignore
# pip returns at once when everything is already satisfied.
"$PY" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"

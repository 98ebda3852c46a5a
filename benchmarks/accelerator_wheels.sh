#!/usr/bin/env bash
# Prepares, on a machine with network, what benchmarks/accelerator_check.sh needs on an offline
# GPU machine that already has JAX (with its CUDA plugin), Flax, Optax, Orbax and PyTorch:
#   .whl/      wheels of cnnjax's other dependencies for CPython 3.12 on manylinux x86-64,
#              at the versions of constraints.txt (about 10 MB)
#   .devdata/  Fashion-MNIST's four IDX .gz files (30 MB), from Debian's dataset-fashion-mnist
# Both are git-ignored: copy the checkout with them. WHEEL_PYTHON (default 3.12) picks another
# Python version for the wheels, PYTHON the interpreter whose pip downloads them, and
# FASHION_MNIST_DIR the folder of the IDX files.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
SOURCE=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
# Missing from such a machine (tensorflow-datasets and what it needs beyond JAX's and
# PyTorch's dependencies); einops is listed for images that lack it. protobuf too, although the
# machine has one: the modules generated for tensorflow-metadata and googleapis-common-protos
# refuse a protobuf runtime older than 6.33.5, and this one is the version the suite runs with.
PACKAGES=(ml_collections tensorflow-datasets array_record dm-tree immutabledict simple_parsing
  docstring_parser tensorflow-metadata googleapis-common-protos termcolor toml tensorboardX
  importlib_resources einops protobuf)
# Binary wheels only, for the target interpreter; pip matches each manylinux tag exactly.
PLATFORM=(--only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)

# NAME==VERSION from constraints.txt (names compared as PEP 503 does), else NAME.
pinned() {
  local key
  key=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS='=' read -r name _ version; do
    if [ "$(echo "$name" | tr 'A-Z_.' 'a-z--')" = "$key" ]; then
      echo "$1==$version"
      return
    fi
  done <constraints.txt
  echo "$1"
}

rm -rf .whl
mkdir -p .whl
for package in "${PACKAGES[@]}"; do
  "$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d .whl "$(pinned "$package")"
done
# promise publishes no wheel: build its pure-Python one here.
"$PYTHON" -m pip wheel -q --no-deps -w .whl "$(pinned promise)"
mkdir -p .devdata
cp "$SOURCE"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz .devdata/
ls -l .whl .devdata
du -sh .whl .devdata

#!/usr/bin/env bash
# The two README commands, each doing all of its own set-up on a fresh Debian machine:
#   ./quickstart.sh train [cnnjax train flags...]   train the default recipe (LeNet-5, Fashion-MNIST)
#   ./quickstart.sh test  [pytest args...]          run the default test suite (in parallel workers)
# Set-up (idempotent, skipped when already done): a virtual environment in .venv with cnnjax and
# its dependencies, and Debian's dataset-fashion-mnist package where apt is available.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
DATASET_DIR=/usr/share/datasets/fashion-mnist

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

setup_venv() {
  # Reinstall only when pyproject.toml or constraints.txt changed since the last install.
  local stamp="$VENV/.cnnjax-installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return
  echo "[setup] creating $VENV with $PYTHON and installing cnnjax (first run: about 2 minutes)"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian splits venv/ensurepip into its own package.
    as_root apt-get install -y python3-venv >/dev/null || as_root bash -c "apt-get update -qq && apt-get install -y -qq python3-venv"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # constraints.txt pins the versions the suite last passed with (JAX, Flax and Orbax APIs move).
  "$VENV/bin/python" -m pip install -q -e ".[dev]" -c constraints.txt
  rm -f "$VENV"/.cnnjax-installed-*
  touch "$stamp"
}

setup_dataset() {
  [ -d "$DATASET_DIR" ] && return
  [ -n "${CNNJAX_DATA_SOURCE_DIR:-}" ] && return
  if command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's dataset-fashion-mnist (the offline Fashion-MNIST source)"
    as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || as_root bash -c "apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist" >/dev/null \
      || echo "[setup] could not install dataset-fashion-mnist (needs root); set CNNJAX_DATA_SOURCE_DIR to a folder with the Fashion-MNIST IDX .gz files" >&2
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  train)
    setup_venv
    setup_dataset
    start=$(date +%s)
    "$VENV/bin/cnnjax" train --config=configs/lenet5_fashion_mnist.py \
      --workdir="${WORKDIR:-runs/lenet5_fashion_mnist}" "$@"
    echo "[train] cnnjax train took $(( $(date +%s) - start )) s"
    ;;
  test)
    setup_venv
    setup_dataset
    # Worker processes (pytest-xdist), one test file each at a time (the files sharing the smoke
    # run together: tests/conftest.py): most of the suite's time is XLA compiling on one core. At most 4: each worker holds a few GB. -n 0 runs serially.
    workers=${CNNJAX_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
    "$VENV/bin/python" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
    ;;
  *)
    echo "usage: ./quickstart.sh {train|test} [args...]" >&2
    exit 2
    ;;
esac

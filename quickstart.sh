#!/usr/bin/env bash
# The two README commands, each doing all of its own set-up on a fresh Debian machine:
#   ./quickstart.sh train [cnnjax train flags...]   train the default recipe (LeNet-5, Fashion-MNIST)
#   ./quickstart.sh test  [pytest args...]          run the default test suite (in parallel workers)
# Set-up (idempotent, skipped when already done): a virtual environment in .venv with cnnjax and
# its dependencies, and Debian's dataset-fashion-mnist package where apt is available.
# The JAX build follows the machine: an NVIDIA GPU (nvidia-smi) gets the ".[cuda13]" extra (driver
# 580 or newer) or ".[cuda12]", a TPU VM ".[tpu]", anything else the CPU build;
# CNNJAX_ACCELERATOR=cpu|cuda12|cuda13|tpu overrides, and CNNJAX_SETUP_DRY_RUN=1 prints the
# choice and the install command without installing anything.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
DATASET_DIR=/usr/share/datasets/fashion-mnist

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

# The pyproject.toml extra holding this machine's JAX build ("" for the CPU build), and why.
accelerator_extra() {
  local choice=${CNNJAX_ACCELERATOR:-auto}
  case "$choice" in
    cpu) echo "|CNNJAX_ACCELERATOR=cpu"; return ;;
    cuda12 | cuda13 | tpu) echo "$choice|CNNJAX_ACCELERATOR=$choice"; return ;;
    auto) ;;
    *)
      echo "CNNJAX_ACCELERATOR=$choice: use auto, cpu, cuda12, cuda13 or tpu" >&2
      exit 2
      ;;
  esac
  local driver
  if command -v nvidia-smi >/dev/null \
    && driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1) \
    && [ -n "$driver" ]; then
    # CUDA 13 wheels need an R580 driver or newer; older drivers run the CUDA 12 build.
    if [ "${driver%%.*}" -ge 580 ] 2>/dev/null; then
      echo "cuda13|NVIDIA GPU, driver $driver"
    else
      echo "cuda12|NVIDIA GPU, driver $driver (older than 580: CUDA 12)"
    fi
    return
  fi
  # TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5e and later); Google's
  # PCI vendor id 0x1ae0 tells them from other accelerators.
  if grep -qs 0x1ae0 /sys/bus/pci/devices/*/vendor \
    && { compgen -G "/dev/accel*" || compgen -G "/dev/vfio/[0-9]*"; } >/dev/null; then
    echo "tpu|TPU VM"
    return
  fi
  echo "|no NVIDIA GPU or TPU found"
}

setup_venv() {
  local detected extra reason extras
  detected=$(accelerator_extra) || exit 2
  extra=${detected%%|*}
  reason=${detected#*|}
  extras=dev${extra:+,$extra}
  if [ -n "${CNNJAX_SETUP_DRY_RUN:-}" ]; then
    echo "[setup] JAX build: ${extra:-cpu} ($reason)"
    echo "[setup] would run: $VENV/bin/python -m pip install -e \".[$extras]\" -c constraints.txt"
    exit 0
  fi
  # Reinstall only when pyproject.toml, constraints.txt or the JAX build changed since the last
  # install: a GPU user's `pip install -U "jax[cuda13]"` is undone with its plugin together.
  local stamp="$VENV/.cnnjax-installed-$( (cat pyproject.toml constraints.txt; echo "$extras") | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return
  echo "[setup] creating $VENV with $PYTHON and installing cnnjax (first run: about 2 minutes)"
  echo "[setup] JAX build: ${extra:-cpu} ($reason); CNNJAX_ACCELERATOR=cpu|cuda12|cuda13|tpu overrides"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian splits venv/ensurepip into its own package.
    as_root apt-get install -y python3-venv >/dev/null || as_root bash -c "apt-get update -qq && apt-get install -y -qq python3-venv"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # constraints.txt pins the versions the suite last passed with (JAX, Flax and Orbax APIs move).
  "$VENV/bin/python" -m pip install -q -e ".[$extras]" -c constraints.txt
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

#!/usr/bin/env bash
# One call that checks cnnjax on a GPU machine, offline (benchmarks/accelerator_check.py):
#   benchmarks/accelerator_check.sh [--json=FILE] [--models=...] [--budget-seconds=450]
#   benchmarks/accelerator_check.sh --cpu-smoke     # everything on the CPU at tiny sizes
# Where cnnjax's dependencies are missing (a GPU box with JAX, Flax, Optax, Orbax and PyTorch
# but no network), installs them from the wheels in .whl/ that benchmarks/accelerator_wheels.sh
# downloaded on a networked machine, into .site/ (no index, no dependency resolution), and reads
# Fashion-MNIST's IDX files from .devdata/ when they are there. PYTHON picks the interpreter
# (default: .venv/bin/python if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# What cnnjax imports beyond a JAX/PyTorch image (tensorflow_datasets brings its own needs).
MODULES="ml_collections tensorflow_datasets tensorboardX importlib_resources array_record einops"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Found, not imported (importing tensorflow_datasets takes a second); a broken one shows up as
# an error of the part that imports it.
imports_work() {
  "$PYTHON" -c "import importlib.util as u, sys; sys.exit(any(not u.find_spec(m) for m in sys.argv[1:]))" $MODULES
}

if ! imports_work; then
  export PYTHONPATH="$ROOT/.site:$PYTHONPATH"
  if ! imports_work; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
      echo "cnnjax's dependencies are missing and .whl/ holds no wheels: run" \
        "benchmarks/accelerator_wheels.sh on a machine with network first" >&2
      exit 1
    fi
    echo "[accelerator_check] installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into .site/"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site .whl/*.whl
    imports_work || { echo "still missing after the install: one of $MODULES" >&2; exit 1; }
  fi
fi
if [ -z "${CNNJAX_DATA_SOURCE_DIR:-}" ] && [ -d .devdata ]; then
  export CNNJAX_DATA_SOURCE_DIR="$ROOT/.devdata"
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/accelerator_check.py "$@"

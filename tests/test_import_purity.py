"""Importing cnnjax changes nothing in the process: not the environment, not matplotlib's
backend or style, not JAX's configuration; and its plots draw under the user's backend.

A notebook that imports cnnjax.train must keep its inline plots and its JAX settings, so the
check runs where that state is untouched: one fresh interpreter (the pytest process has long
since imported everything).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: records the state, imports every cnnjax module, draws one plot
# and prints what changed as JSON.
_CHILD = r"""
import importlib, importlib.util, json, os, pkgutil, sys

import jax
import matplotlib

# A notebook's `%matplotlib inline`; svg stands in where matplotlib_inline is not installed.
INLINE = "module://matplotlib_inline.backend_inline"
matplotlib.use(INLINE if importlib.util.find_spec("matplotlib_inline") else "svg")


def state():
    return {
        "environ": dict(os.environ),
        "backend": matplotlib.get_backend(),
        "rcParams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
        "jax_config": {k: repr(v) for k, v in jax.config.values.items()},
    }


def differences(before, after):
    changed = {}
    for part, old in before.items():
        new = after[part]
        if not isinstance(old, dict):
            if old != new:
                changed[part] = [old, new]
            continue
        keys = sorted(set(old) | set(new))
        diff = {k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)}
        if diff:
            changed[part] = diff
    return changed


def fail(name):
    raise ImportError(f"cannot import {name}")


before = state()
import cnnjax

modules = ["cnnjax"]
for module in pkgutil.walk_packages(cnnjax.__path__, "cnnjax.", onerror=fail):
    importlib.import_module(module.name)
    modules.append(module.name)
after_import = state()

from cnnjax.metrics.plots import plot_curves

rows = [
    {"split": split, "epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5 + 0.1 * epoch}
    for split in ("train_epoch", "test")
    for epoch in (1, 2)
]
png = plot_curves(rows, os.path.join(sys.argv[1], "curves.png"), title="tiny")
with open(png, "rb") as f:
    signature = f.read(8)
print(json.dumps({
    "modules": modules,
    "import": differences(before, after_import),
    "plot": differences(after_import, state()),
    "png_signature": signature.hex(),
}))
"""


def test_importing_every_module_changes_no_process_state(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"cnnjax.cli", "cnnjax.train", "cnnjax.metrics.plots"} <= set(report["modules"])
    assert report["import"] == {}, "importing cnnjax changed:\n" + json.dumps(
        report["import"], indent=1
    )
    assert report["plot"] == {}, "plot_curves changed:\n" + json.dumps(report["plot"], indent=1)
    assert report["png_signature"] == b"\x89PNG\r\n\x1a\n".hex()  # a PNG whatever the backend
    assert (tmp_path / "curves.png").stat().st_size > 1000

"""Run in a subprocess by tests/test_parallel.py: one process with 8 fake CPU devices (the count
must be set before JAX starts) does every 8-device check, and prints one JSON line:

    python tests/parallel_probe.py WORKDIR

* `equal`: 4 SGD steps of LeNet-5 with batch norm on 8 devices (the `jax.jit` step, and the
  `shard_map` step with synced and with ghost batch norm) against 1 device: the largest
  differences of the per-step losses and of the final state;
* `checkpoint`: `train_and_evaluate` of the `:smoke` recipe (9 steps, EMA) in WORKDIR/run on the
  8 devices, its latest checkpoint restored onto 8 and onto 4 of them as `cnnjax eval` reads it
  (saved as WORKDIR/state8.npz and WORKDIR/state4.npz);
* `uneven_batch`: the error of training with a batch of 100 on the 8 devices.

A part that raises reports its traceback under `error` instead of stopping the others.
"""

import os
import sys

DEVICES = 8
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cnnjax import fast_paths  # noqa: E402

fast_paths.enable()  # an entry point, like `cnnjax`: its flags before JAX starts
# The suite's compilation cache (XDG_CACHE_HOME comes from tests/conftest.py), as `cnnjax train`
# uses it: a program compiled twice in this process (the smoke run's initialization is the
# `equal` part's) is read back the second time.
fast_paths.enable_compilation_cache("~/.cache/cnnjax/xla")

import functools  # noqa: E402
import json  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from model_sizes import QUICK_COMPILE  # noqa: E402

from cnnjax import load_config, models, parallel, train_and_evaluate  # noqa: E402
from cnnjax.errors import UserError  # noqa: E402
from cnnjax.models.layers import LayerOptions  # noqa: E402
from cnnjax.train import steps  # noqa: E402
from cnnjax.train.shard_map_step import make_shard_map_train_step  # noqa: E402
from cnnjax.train.state import create_train_state  # noqa: E402
from cnnjax.train.trained_run import load_trained_run  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "lenet5_fashion_mnist.py")
STEPS, BATCH, SHAPE = 4, 32, (28, 28, 1)
# A smooth activation: with ReLU, a pre-activation within float32 noise of 0 takes the other side
# of the kink on 8 devices than on 1 (seen on one CPU: ResNet-20's gradient moved 4% in one
# channel after one step, 4e-4 in loss after four), which is not what this probe tests.
ACTIVATION = "tanh"
# The run whose checkpoint moves between topologies: 9 steps (checkpoints at 7 and 9), and an
# EMA of the weights, which the checkpoint must hold too. Small batches (4 examples per device):
# 8 fake devices share the test machine's cores.
SMOKE_RUN = {
    "train.steps": 9,
    "train.ema_decay": 0.9,
    "data.batch_size": 32,
    "data.eval_split": "test[:256]",
    # Not a multiple of 8: the evaluation pads each batch to the devices (104, 104, 56 rows).
    "data.eval_batch_size": 100,
}


def _model(batch_norm_axis):
    return models.create(
        "lenet5",
        num_classes=10,
        normalization="batch",
        activation=ACTIVATION,
        layer_options=LayerOptions(batch_norm_axis=batch_norm_axis),
    )


def train(initial, mesh, path: str, batch_norm: str = "sync"):
    """STEPS steps from `initial` on `mesh`: the per-step losses and the final state."""
    # As `cnnjax.train.run.layer_options`: a shard_map step with synced batch norm needs a model
    # that averages its batch statistics over the mesh's data axis (the same parameters).
    synced = path == "shard_map" and batch_norm == "sync"
    model = _model(parallel.DATA_AXIS if synced else None)
    state = parallel.replicate(jax.tree.map(np.array, initial.replace(apply_fn=model.apply)), mesh)
    options = steps.StepOptions(num_classes=10)
    # Compiled with QUICK_COMPILE, all four alike: they are compared with each other, and XLA:CPU
    # compiles them about twice as fast.
    if path == "jit":
        shardings = (parallel.replicated(mesh), parallel.batch_sharding(mesh))
        fn = jax.jit(
            functools.partial(steps.train_step, options=options),
            in_shardings=shardings,
            out_shardings=(shardings[0], shardings[0]),
            donate_argnums=0,
            compiler_options=QUICK_COMPILE,
        )
    else:
        fn = jax.jit(
            make_shard_map_train_step(mesh, options=options, batch_norm=batch_norm),
            donate_argnums=0,
            compiler_options=QUICK_COMPILE,
        )
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        batch = {
            "image": rng.normal(size=(BATCH, *SHAPE)).astype(np.float32),
            "label": rng.integers(0, 10, BATCH).astype(np.int32),
        }
        state, metrics = fn(state, parallel.shard_batch(batch, mesh))
        losses.append(float(metrics["loss_sum"]) / BATCH)
    return np.array(losses), jax.device_get((state.params, state.batch_stats))


def max_difference(a, b) -> float:
    return max(
        float(np.abs(x - y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def equal(workdir: str) -> dict:
    del workdir
    initial = create_train_state(_model(None), optax.sgd(0.02, 0.9), input_shape=SHAPE, seed=0)
    reference_losses, reference = train(initial, parallel.data_mesh(1), "jit")
    out = {}
    for path, batch_norm in (("jit", "sync"), ("shard_map", "sync"), ("shard_map", "ghost")):
        losses, state = train(initial, parallel.data_mesh(0), path, batch_norm)
        key = path + ("/ghost" if batch_norm == "ghost" else "")
        out[key] = {
            "loss": float(np.abs(losses - reference_losses).max()),
            "state": max_difference(state, reference),
        }
    return out


def _config(**overrides):
    return load_config(f"{RECIPE}:smoke", overrides)


def checkpoint(workdir: str) -> dict:
    """Trains on all 8 devices, then restores the latest checkpoint on 8 and on 4 of them."""
    run = os.path.join(workdir, "run")
    outcome = train_and_evaluate(_config(**SMOKE_RUN), run)
    out = {
        "num_devices": outcome.results["num_devices"],
        "devices_per_leaf": {},
        "test": [outcome.results["test_accuracy"], outcome.results["test_loss"]],
    }
    for devices in (8, 4):
        config = _config(**{**SMOKE_RUN, "parallel.num_devices": devices})
        restored = load_trained_run(run, "latest", config=config).state
        shardings = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(restored)}
        out["devices_per_leaf"][str(devices)] = sorted(shardings)
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(restored))[0]
        np.savez(
            os.path.join(workdir, f"state{devices}.npz"),
            **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves},
        )
    return out


def uneven_batch(workdir: str) -> dict:
    try:
        train_and_evaluate(_config(**{"data.batch_size": 100}), os.path.join(workdir, "uneven"))
    except UserError as error:
        return {"error": str(error)}
    return {"error": None}


if __name__ == "__main__":
    out = {"devices": jax.device_count()}
    for part in (equal, checkpoint, uneven_batch):
        try:
            out[part.__name__] = part(sys.argv[1])
        except Exception:  # reported to the test, which fails with it
            out[part.__name__] = {"error": traceback.format_exc()}
    print(json.dumps(out))

"""Run in a subprocess by tests/test_parallel.py, with N fake CPU devices set before JAX starts:

python tests/parallel_probe.py DEVICES equal               -> JSON of differences to 1 device
python tests/parallel_probe.py DEVICES restore WORKDIR OUT -> OUT.npz of the restored state
"""

import os
import sys

DEVICES = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnnjax import models, parallel  # noqa: E402
from cnnjax.train import steps  # noqa: E402
from cnnjax.train.state import create_train_state  # noqa: E402

STEPS, BATCH = 4, 32
# A smooth activation: with ReLU, a pre-activation within float32 noise of 0 takes the other side
# of the kink on 8 devices than on 1 (seen on one CPU: ResNet-20's gradient moved 4% in one
# channel after one step, 4e-4 in loss after four), which is not what this probe tests.
ACTIVATION = "tanh"


def train(mesh, name: str, path: str, shape, batch_norm: str = "sync"):
    model = models.create(name, num_classes=10, normalization="batch", activation=ACTIVATION)
    state = create_train_state(model, optax.sgd(0.02, 0.9), input_shape=shape, seed=0)
    state = parallel.replicate(state, mesh)
    if path == "jit":
        shardings = (parallel.replicated(mesh), parallel.batch_sharding(mesh))
        fn = jax.jit(
            functools.partial(steps.train_step, num_classes=10),
            in_shardings=shardings,
            out_shardings=(shardings[0], shardings[0]),
            donate_argnums=0,
        )
    else:
        from cnnjax.parallel.shard_map_step import make_shard_map_train_step

        fn = jax.jit(
            make_shard_map_train_step(mesh, num_classes=10, batch_norm=batch_norm),
            donate_argnums=0,
        )
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        batch = {
            "image": rng.normal(size=(BATCH, *shape)).astype(np.float32),
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


def equal() -> dict:
    out = {"devices": jax.device_count()}
    for name, shape in (("lenet5", (28, 28, 1)), ("resnet20", (16, 16, 3))):
        reference_losses, reference = train(parallel.data_mesh(1), name, "jit", shape)
        for path, batch_norm in (("jit", "sync"), ("shard_map", "sync"), ("shard_map", "ghost")):
            losses, state = train(parallel.data_mesh(0), name, path, shape, batch_norm)
            key = f"{name}/{path}" + ("/ghost" if batch_norm == "ghost" else "")
            out[key] = {
                "loss": float(np.abs(losses - reference_losses).max()),
                "state": max_difference(state, reference),
            }
    return out


def restore(workdir: str, out: str) -> None:
    """Restores the run in `workdir` the way `cnnjax train` resumes it, on this topology."""
    from cnnjax.train.loop import Run

    config = json.load(open(os.path.join(workdir, "config.json")))
    import ml_collections

    run = Run(ml_collections.ConfigDict(config), workdir)
    run.restore()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(run.state))[0]
    shardings = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(run.state)}
    np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print(json.dumps({"devices": jax.device_count(), "devices_per_leaf": sorted(shardings)}))


if __name__ == "__main__":
    command = sys.argv[2]
    if command == "equal":
        print(json.dumps(equal()))
    elif command == "restore":
        restore(sys.argv[3], sys.argv[4])

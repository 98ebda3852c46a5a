"""Training-step throughput and compile time of registered models on synthetic data.

    .venv/bin/python benchmarks/train_throughput.py [--models=lenet5] [--batch_size=256]

Prints, per model, the compile time of the first step and the median images/s over several
timed windows of jitted steps (after warm-up), with the state donated as in training.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from cnnjax import models
from cnnjax.config_base import get_base_config
from cnnjax.train.loop import make_steps
from cnnjax.train.optim import make_optimizer
from cnnjax.train.state import create_train_state

_MODELS = flags.DEFINE_list("models", ["lenet5"], "Registered model names.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per step.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows; the median is reported.")
_STEPS = flags.DEFINE_integer("steps_per_window", 30, "Steps per timed window.")


def measure(name: str, batch_size: int, windows: int, steps_per_window: int) -> dict:
    """Compile seconds and per-window images/s of `name`'s train step on random data."""
    height, width, channels = models.default_input_shape(name)
    if name == "lenet5":
        height, width = 28, 28  # Fashion-MNIST size; the model pads to 32 itself
    tx = make_optimizer(get_base_config().optimizer, steps_per_epoch=100, total_steps=10_000)
    state = create_train_state(
        models.create(name), tx, input_shape=(height, width, channels), seed=0
    )
    train_fn, _, _ = make_steps(num_classes=10, label_smoothing=0.0)
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "image": rng.normal(size=(batch_size, height, width, channels)).astype(np.float32),
            "label": rng.integers(0, 10, batch_size).astype(np.int32),
        }
    )
    start = time.perf_counter()
    state, _ = train_fn(state, batch)
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start
    for _ in range(3):  # warm-up
        state, _ = train_fn(state, batch)
    speeds = []
    for _ in range(windows):
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps_per_window):
            state, _ = train_fn(state, batch)
        jax.block_until_ready(state)
        speeds.append(steps_per_window * batch_size / (time.perf_counter() - start))
    return {
        "model": name,
        "batch_size": batch_size,
        "compile_seconds": compile_seconds,
        "images_per_sec_median": statistics.median(speeds),
        "images_per_sec": speeds,
    }


def main(argv):
    del argv
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'model':<12} {'batch':>6} {'compile s':>10} {'images/s (median)':>18}  windows")
    for name in _MODELS.value:
        r = measure(name, _BATCH.value, _WINDOWS.value, _STEPS.value)
        windows = " ".join(f"{s:,.0f}" for s in r["images_per_sec"])
        print(
            f"{name:<12} {r['batch_size']:>6} {r['compile_seconds']:>10.2f} "
            f"{r['images_per_sec_median']:>18,.0f}  {windows}"
        )


if __name__ == "__main__":
    app.run(main)

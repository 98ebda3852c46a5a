"""Training-step throughput and compile time of registered models on synthetic data.

    .venv/bin/python benchmarks/train_throughput.py [--models=lenet5] [--batch_size=256]
        [--image_size=N] [--normalization=none|batch] [--json=FILE]

Prints, per model, the seconds of the first step (tracing + compilation + one step) and the
median images/s over several timed windows of jitted steps after warm-up, with the state donated
as in training. The optimizer is SGD with momentum 0.9 (lr 0.01), the step the PyTorch twins in
torch_reference.py time, so that benchmarks/suite.py can compare the two. Fast paths follow
CNNJAX_FAST_PATHS (cnnjax/fast_paths.py): the YNNPACK flag, and the model's block convolutions
and reshape pooling (its `layer_options`); suite.py runs this once with them and once without.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from cnnjax import fast_paths, models
from cnnjax.config_base import get_base_config
from cnnjax.models.layers import LayerOptions
from cnnjax.train.optim import make_optimizer
from cnnjax.train.run import make_steps
from cnnjax.train.state import create_train_state
from cnnjax.train.steps import StepOptions

NUM_CLASSES = 10


def input_shape(name: str, image_size: int = 0) -> tuple[int, int, int]:
    """(H, W, C) of the benchmark's images: Fashion-MNIST's 28x28 for lenet5 (the model pads
    to 32 itself), else the model's default side or `image_size`."""
    height, width, channels = models.default_input_shape(name)
    if image_size:
        height = width = image_size
    elif name == "lenet5":
        height = width = 28
    return height, width, channels


def sgd_momentum():
    """SGD with momentum 0.9, lr 0.01: the optimizer of the PyTorch twins (torch_reference.py)."""
    optimizer = get_base_config().optimizer
    optimizer.name, optimizer.learning_rate, optimizer.momentum = "momentum", 0.01, 0.9
    return make_optimizer(optimizer, steps_per_epoch=100, total_steps=10_000)


def timed_windows(step, state, batch, *, windows: int, steps_per_window: int, warmup: int):
    """Runs `step(state, batch)` once (compiling, timed alone), `warmup` more times, then
    `windows` timed windows of `steps_per_window` steps; returns (first step seconds, images/s
    of each window, the last state, the last metrics)."""
    batch_size = len(batch["label"])
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    first_step_seconds = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = step(state, batch)
    speeds = []
    for _ in range(windows):
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps_per_window):
            state, metrics = step(state, batch)
        jax.block_until_ready(state)
        speeds.append(steps_per_window * batch_size / (time.perf_counter() - start))
    return first_step_seconds, speeds, state, metrics


def measure(
    name: str,
    batch_size: int,
    *,
    windows: int,
    steps_per_window: int,
    warmup: int = 3,
    image_size: int = 0,
    normalization: str = "",
    seed: int = 0,
) -> dict:
    """First-step seconds and per-window images/s of `name`'s train step on one random batch."""
    fast = fast_paths.enabled_by_environment()
    options = {
        "num_classes": NUM_CLASSES,  # as the PyTorch twins (ResNet-18/50 default 1000)
        "layer_options": LayerOptions(block_convolutions=fast, reshape_pooling=fast),
    }
    if normalization:
        options["normalization"] = normalization
    shape = input_shape(name, image_size)
    model = models.create(name, **options)
    state = create_train_state(model, sgd_momentum(), input_shape=shape, seed=seed)
    train_fn = make_steps(StepOptions(num_classes=NUM_CLASSES)).train
    rng = np.random.default_rng(seed)
    batch = jax.device_put(
        {
            "image": rng.normal(size=(batch_size, *shape)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        }
    )
    first_step_seconds, speeds, _, _ = timed_windows(
        train_fn,
        state,
        batch,
        windows=windows,
        steps_per_window=steps_per_window,
        warmup=warmup if windows else 0,
    )
    return {
        "model": name,
        "batch_size": batch_size,
        "image_shape": list(shape),
        "fast_paths": fast,
        "first_step_seconds": first_step_seconds,
        "images_per_sec_median": statistics.median(speeds) if speeds else None,
        "images_per_sec": speeds,
    }


def main(argv):
    del argv
    fast_paths.enable()  # before the first computation starts JAX's backend
    if _CACHE.value:
        fast_paths.enable_compilation_cache(_CACHE.value)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'model':<12} {'batch':>6} {'first step s':>13} {'images/s (median)':>18}  windows")
    results = []
    for name in _MODELS.value:
        r = measure(
            name,
            _BATCH.value,
            windows=_WINDOWS.value,
            steps_per_window=_STEPS.value,
            warmup=_WARMUP.value,
            image_size=_IMAGE.value,
            normalization=_NORM.value,
        )
        results.append(r)
        windows = " ".join(f"{s:,.0f}" for s in r["images_per_sec"])
        median = f"{r['images_per_sec_median']:,.0f}" if r["images_per_sec"] else "-"
        print(
            f"{name:<12} {r['batch_size']:>6} {r['first_step_seconds']:>13.2f} {median:>18}  "
            f"{windows}"
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    # Flags only when run as a script: suite.py imports measure() beside flags of its own.
    _MODELS = flags.DEFINE_list("models", ["lenet5"], "Registered model names.")
    _BATCH = flags.DEFINE_integer("batch_size", 256, "Images per step.")
    _IMAGE = flags.DEFINE_integer("image_size", 0, "Image side; 0: the model's (lenet5: 28).")
    _NORM = flags.DEFINE_string(
        "normalization", "", "Model normalization; '': the model's default."
    )
    _WINDOWS = flags.DEFINE_integer(
        "windows", 5, "Timed windows (0: compile only); median reported."
    )
    _STEPS = flags.DEFINE_integer("steps_per_window", 30, "Steps per timed window.")
    _WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after the first.")
    _CACHE = flags.DEFINE_string(
        "compilation_cache_dir", "", "Persistent compilation cache folder."
    )
    _JSON = flags.DEFINE_string("json", "", "Also write the results (a list of dicts) here.")
    app.run(main)

"""The measurements of benchmarks/accelerator_check.py, each run in a child process: the
modes (accelerator sizes, and the tiny CPU smoke of the test suite), the devices, cnnjax's and
PyTorch's train steps, the default recipe end to end, and a few steps on the accelerator
against the same steps on the CPU. `run_child` runs a list of them and turns an exception into
an {"error": ...} entry, so that one failing measurement does not stop the others."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(os.path.dirname(HERE), "configs", "lenet5_fashion_mnist.py")
MODELS = ("lenet5", "resnet20", "resnet18", "resnet50")
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one mode measures: per model (batch size, image side, normalization), its dtypes
    and steps per timed window; XLA compiler options; the recipe's variant and overrides."""

    name: str
    shapes: dict
    dtypes: dict
    steps_per_window: dict
    windows: int
    warmup: int
    compiler_options: dict | None
    recipe: str
    recipe_overrides: tuple = ()
    torch_compile: bool = True
    diff_batch_size: int = 128


ACCELERATOR = Mode(
    name="accelerator",
    # Batch sizes that keep an H100/H200 busy; LeNet-5 without normalization, as in suite.py.
    shapes={
        "lenet5": (256, 28, "none"),
        "resnet20": (128, 32, "batch"),
        "resnet18": (128, 224, "batch"),
        "resnet50": (128, 224, "batch"),
    },
    dtypes={model: ("float32", "bfloat16") for model in MODELS},
    # About a quarter of a second per window at the speeds expected on an H200.
    steps_per_window={"lenet5": 100, "resnet20": 50, "resnet18": 20, "resnet50": 10},
    windows=5,
    warmup=5,  # cuDNN's algorithm search (PyTorch) happens in the first steps
    compiler_options=None,
    recipe=RECIPE,
)
CPU_SMOKE = Mode(
    name="cpu-smoke",
    # Compilation costs the same at any size, and is most of this mode's time: the smallest
    # sizes that still train. At 8x8 pixels ResNet-50's last stage is 1x1, so batch norm
    # normalizes one value per image there: with 2 images its loss was NaN after 3 steps.
    shapes={
        "lenet5": (4, 28, "none"),
        "resnet20": (4, 8, "batch"),
        "resnet18": (4, 8, "batch"),
        "resnet50": (4, 8, "batch"),
    },
    # One bfloat16 model checks that path: each more ResNet costs 2-5 CPU seconds to compile,
    # and this mode runs inside the default test suite.
    dtypes={"lenet5": ("float32", "bfloat16"), **{m: ("float32",) for m in MODELS[1:]}},
    steps_per_window={model: 1 for model in MODELS},
    windows=1,
    warmup=0,  # the first step warms up
    # Backend optimizations off: ResNet-50's step compiles in 4 s instead of 6 s on 2 cores.
    compiler_options={"xla_backend_optimization_level": 0},
    recipe=f"{RECIPE}:smoke",
    # 10 steps, no checkpoint before the last: the recipe's path end to end in 6 CPU seconds.
    recipe_overrides=(
        "--config.train.steps=10",
        "--config.train.log_every_steps=10",
        "--config.train.checkpoint_every_steps=1000",
        "--config.data.train_split=train[:1280]",
        "--config.data.eval_split=test[:500]",
    ),
    torch_compile=False,  # minutes of C++ compilation on 2 cores
    diff_batch_size=16,
)


# ----------------------------------------------------------------------------- the children


def devices_info(mode: Mode) -> dict:
    import jax

    devices = jax.devices()
    info = {
        "backend": jax.default_backend(),
        "count": len(devices),
        "kind": devices[0].device_kind,
        "devices": [str(device) for device in devices],
        "python": platform.python_version(),
        "cpu_threads": len(os.sched_getaffinity(0)),
        "versions": package_versions(),
    }
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["jax_memory_limit_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    return info


def package_versions() -> dict:
    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax")
    names += ("orbax-checkpoint", "numpy", "tensorflow-datasets", "torch", "torchvision")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def synthetic_state(model, tx, image_shape: tuple[int, ...]):
    """A train state with random kernels (scaled by 1/sqrt(fan-in)), unit batch-norm scales and
    statistics, zero biases and the optimizer's own initial state, built from the state's shapes:
    the speed of a step does not depend on the values, and compiling the model's initializers
    would cost ResNet-50 7 s on 2 CPU cores (in --cpu-smoke)."""
    import jax
    import numpy as np

    from cnnjax.train.state import abstract_train_state

    rng = np.random.default_rng(0)

    def parameter(path, leaf):
        if len(leaf.shape) >= 2:
            fan_in = np.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
        return np.full(leaf.shape, getattr(path[-1], "key", None) == "scale", leaf.dtype)

    abstract = abstract_train_state(model, tx, input_shape=image_shape)
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)
    params = jax.tree_util.tree_map_with_path(parameter, abstract.params)
    state = zeros.replace(
        params=params,
        batch_stats=jax.tree.map(np.ones_like, zeros.batch_stats),
        opt_state=jax.jit(tx.init)(params),  # e.g. a learning rate kept in the state
    )
    return jax.device_put(state)


def measure_jax(mode: Mode, model: str, dtype: str) -> dict:
    """Compile seconds and images/s of cnnjax's train step of `model` in `dtype`."""
    import jax
    import numpy as np
    import train_throughput

    from cnnjax import models
    from cnnjax.models.layers import LayerOptions
    from cnnjax.train.run import make_steps
    from cnnjax.train.steps import StepOptions

    batch_size, side, normalization = mode.shapes[model]
    shape = train_throughput.input_shape(model, side)
    # The plain layers: what training uses off the CPU (model.fast_paths resolves to off there).
    plain = LayerOptions(block_convolutions=False, reshape_pooling=False)
    net = models.create(
        model, num_classes=NUM_CLASSES, normalization=normalization, layer_options=plain
    )
    state = synthetic_state(net, train_throughput.sgd_momentum(), shape)
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "image": rng.normal(size=(batch_size, *shape)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        }
    )
    train = make_steps(StepOptions(num_classes=NUM_CLASSES, compute_dtype=dtype)).train
    start = time.perf_counter()
    step = train.lower(state, batch).compile(mode.compiler_options)
    compile_seconds = time.perf_counter() - start
    steps = mode.steps_per_window[model]
    first_step_seconds, speeds, _, metrics = train_throughput.timed_windows(
        step, state, batch, windows=mode.windows, steps_per_window=steps, warmup=mode.warmup
    )
    return {
        "batch_size": batch_size,
        "image_shape": list(shape),
        "compile_seconds": compile_seconds,
        "first_step_seconds": first_step_seconds,
        "images_per_sec_median": statistics.median(speeds),
        "images_per_sec": speeds,
        "steps_per_window": steps,
        "last_loss": float(metrics["loss_sum"] / metrics["count"]),
    }


def measure_torch(mode: Mode, model: str, dtype: str, compiled: bool) -> dict:
    """The same step in PyTorch (torch_reference.py) on the GPU (the CPU in --cpu-smoke)."""
    import torch
    import torch_reference

    if mode is ACCELERATOR and not torch.cuda.is_available():
        raise RuntimeError(f"PyTorch {torch.__version__} sees no GPU")
    device = "cuda" if mode is ACCELERATOR else "cpu"
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    # TF32 for float32 matrix products, as XLA's default precision on NVIDIA GPUs.
    torch.set_float32_matmul_precision("high")
    batch_size, side, normalization = mode.shapes[model]
    result = torch_reference.measure_train_step(
        torch_reference.create(model, num_classes=NUM_CLASSES, normalization=normalization),
        batch_size,
        torch_reference.input_shape(model, side),
        threads=len(os.sched_getaffinity(0)),
        windows=mode.windows,
        steps_per_window=mode.steps_per_window[model],
        warmup=mode.warmup,
        memory_format=torch.channels_last,
        device=device,
        autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None,
        compile_model=compiled,
    )
    return {**result, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda}


def train_recipe(mode: Mode) -> dict:
    """The default recipe through cnnjax's Python API, in a temporary workdir."""
    import cnnjax

    config = cnnjax.load_config(mode.recipe, list(mode.recipe_overrides))
    with tempfile.TemporaryDirectory(prefix="cnnjax_check_") as workdir:
        start = time.perf_counter()
        results = cnnjax.train_and_evaluate(config, os.path.join(workdir, "run")).results
        seconds = time.perf_counter() - start
    # `seconds` includes preparing Fashion-MNIST on its first use; `wall_seconds` is the run's.
    keys = ("test_accuracy", "test_loss", "steps", "epochs", "wall_seconds", "compile_seconds")
    keys += ("train_images_per_sec", "device_kind", "num_devices")
    return {
        "recipe": os.path.relpath(mode.recipe, os.path.dirname(HERE)),
        "overrides": list(mode.recipe_overrides),
        "seconds": seconds,
        **{key: results.get(key) for key in keys},
    }


def compare_with_cpu(mode: Mode, steps: int = 3) -> dict:
    """`steps` LeNet-5 train steps (the recipe's net, float32) on the accelerator and on the
    CPU from the same state and batches: the largest parameter difference after them, at JAX's
    default precision and at "highest" (in --cpu-smoke both runs are on the CPU: 0)."""
    import jax
    import numpy as np
    import train_throughput

    import cnnjax
    from cnnjax.models.layers import LayerOptions
    from cnnjax.train.run import make_steps
    from cnnjax.train.steps import StepOptions

    accelerator, cpu = jax.devices()[0], jax.devices("cpu")[0]
    plain = LayerOptions(block_convolutions=False, reshape_pooling=False)
    net = cnnjax.create_model(
        "lenet5",
        num_classes=NUM_CLASSES,
        normalization="batch",
        activation="relu",
        pooling="max",
        layer_options=plain,
    )
    with jax.default_device(cpu):
        start = jax.device_get(synthetic_state(net, train_throughput.sgd_momentum(), (28, 28, 1)))
    rng = np.random.default_rng(0)
    size = mode.diff_batch_size
    batches = [
        {
            "image": rng.normal(size=(size, 28, 28, 1)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, size).astype(np.int32),
        }
        for _ in range(steps)
    ]
    train = make_steps(StepOptions(num_classes=NUM_CLASSES)).train

    def run(device, precision):
        state, losses = jax.device_put(start, device), []
        with jax.default_device(device), jax.default_matmul_precision(precision):
            for batch in batches:
                state, metrics = train(state, jax.device_put(batch, device))
                losses.append(float(metrics["loss_sum"] / metrics["count"]))
        return jax.device_get((state.params, state.batch_stats)), losses

    result = {"model": "lenet5", "steps": steps, "batch_size": size}
    result.update(accelerator=str(accelerator), cpu=str(cpu))
    # On the CPU "highest" is the default: the same program again, skipped.
    for precision in ("default", "highest")[: 1 if accelerator.platform == "cpu" else 2]:
        on_accelerator, accelerator_losses = run(accelerator, precision)
        on_cpu, cpu_losses = run(cpu, precision)
        difference = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), on_accelerator, on_cpu)
        result[precision] = {
            "max_abs_param_difference": max(jax.tree.leaves(difference)),
            "loss_accelerator": accelerator_losses,
            "loss_cpu": cpu_losses,
        }
    result["max_abs_param"] = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(on_cpu))
    return result


def run_child(mode: Mode, items: list[dict]) -> list[dict]:
    """In a fresh process: the measurements `items` ({"kind": ..., arguments}), in order; an
    exception becomes {"error": ...} and the next measurement still runs."""
    sys.path.insert(0, HERE)  # train_throughput, torch_reference
    from cnnjax import fast_paths

    fast_paths.enable()  # as every cnnjax entry point, before JAX starts its backend
    functions = {
        "devices": devices_info,
        "jax": measure_jax,
        "torch": measure_torch,
        "recipe": train_recipe,
        "cpu_diff": compare_with_cpu,
    }
    results = []
    for item in items:
        arguments = {key: value for key, value in item.items() if key != "kind"}
        start = time.perf_counter()
        try:
            result = functions[item["kind"]](mode, **arguments)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"}
        results.append({**result, "seconds": time.perf_counter() - start})
    return results

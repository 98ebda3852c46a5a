"""The benchmark suite: JAX (plain and fast paths) vs PyTorch train steps, compile times, input.

    .venv/bin/python benchmarks/suite.py [--models=lenet5,resnet20,resnet18,resnet50]
        [--json=benchmarks/results/suite.json] [--windows=5] [--repeats=3]

For each model (LeNet-5 28x28x1 batch 256 without normalization, as in the issue that asked for
this; CIFAR ResNet-20 32x32x3 batch 128; ResNet-18 and ResNet-50 224x224x3 at a small batch on
CPU, larger on an accelerator; all with batch norm where the model has it) it measures, each in
a fresh process so that nothing one run compiled or allocated helps the next:

- cnnjax's train step with fast paths off (CNNJAX_FAST_PATHS=0: the plain paths) and on (the
  default), median images/s over timed windows after warm-up, and the first step's seconds
  (tracing + compilation); the first step again with a warm persistent compilation cache;
- where PyTorch is installed (`pip install -e ".[bench]"`), the same network in PyTorch
  (torch_reference.py) with as many threads as this process may use, and the JAX/PyTorch ratio;
- the input pipeline's images/s alone (input_pipeline.py).

With --repeats=N the whole measurement (every model, every kind) runs N times in turn, so that
a slow spell of the machine hits one repeat and not one framework; the table and the JSON's
`train_step` rows give the median over repeats of each speed and of each per-repeat ratio, and
`repeats` keeps every repeat's rows.

Prints a table and writes everything (every window, versions, CPU) to the JSON file. Optimizer:
SGD with momentum in both frameworks; synthetic images, so only the compute is compared.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
# model -> (batch size on CPU, batch size on an accelerator, image side, normalization,
#           steps per timed window on CPU)
SETTINGS = {
    "lenet5": (256, 256, 28, "none", 20),
    "resnet20": (128, 128, 32, "batch", 4),
    "resnet18": (8, 128, 224, "batch", 2),
    "resnet50": (8, 64, 224, "batch", 1),
}

_MODELS = flags.DEFINE_list("models", list(SETTINGS), f"Any of {', '.join(SETTINGS)}.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows per measurement (median reported).")
_JSON = flags.DEFINE_string("json", os.path.join(HERE, "results", "suite.json"), "Output file.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of the whole suite; medians over them.")
_PIPELINE = flags.DEFINE_bool("input_pipeline", True, "Also time the input pipeline alone.")
_CHILD = flags.DEFINE_string("child", "", "Internal: measure one thing in this process.")


def _threads() -> int:
    return len(os.sched_getaffinity(0))


def _on_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def _child(kind: str, model: str, windows: int) -> dict:
    """Runs in a fresh process: one measurement, returned as a dict."""
    sys.path.insert(0, HERE)
    if kind == "pipeline":
        import input_pipeline

        return input_pipeline.measure(batch_size=128, windows=windows, steps_per_window=100)
    cpu_batch, accelerator_batch, image, normalization, steps = SETTINGS[model]
    if kind == "torch":
        import torch_reference

        return torch_reference.measure_train_step(
            torch_reference.create(model, normalization=normalization),
            cpu_batch,
            torch_reference.input_shape(model, image),
            threads=_threads(),
            windows=windows,
            steps_per_window=steps,
        )
    import train_throughput

    if kind == "jax_cached":  # compile only; main() pointed the cache at CNNJAX_SUITE_CACHE
        windows = 0
    accelerator = _on_accelerator()
    return train_throughput.measure(
        model,
        accelerator_batch if accelerator else cpu_batch,
        windows=windows,
        steps_per_window=steps * (10 if accelerator else 1),
        image_size=image,
        normalization=normalization,
    )


def _run_child(kind: str, model: str, windows: int, environment: dict | None = None) -> dict:
    command = [sys.executable, __file__, f"--child={kind}", f"--models={model}"]
    command.append(f"--windows={windows}")
    env = {**os.environ, **(environment or {})}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{kind} {model} failed (exit {done.returncode}): {tail}"}
    return json.loads(lines[-1])


def _torch_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return done.returncode == 0


def _measure_model(model: str, windows: int, with_torch: bool) -> dict:
    row = {"model": model}
    row["jax_plain"] = _run_child("jax", model, windows, {"CNNJAX_FAST_PATHS": "0"})
    row["jax_fast"] = _run_child("jax", model, windows, {"CNNJAX_FAST_PATHS": "1"})
    with tempfile.TemporaryDirectory(prefix="cnnjax_suite_cache_") as cache:
        cached = {"CNNJAX_FAST_PATHS": "1", "CNNJAX_SUITE_CACHE": cache}
        _run_child("jax_cached", model, 0, cached)  # fills the cache
        row["jax_fast_cached_compile"] = _run_child("jax_cached", model, 0, cached)
    if with_torch:
        row["torch"] = _run_child("torch", model, windows)
    speed = {
        k: row[k].get("images_per_sec_median")
        for k in ("jax_plain", "jax_fast", "torch")
        if k in row
    }
    if speed.get("torch"):
        for key in ("jax_plain", "jax_fast"):
            if speed.get(key):
                row[f"ratio_{key}_vs_torch"] = speed[key] / speed["torch"]
    return row


def _median(values: list) -> float | None:
    values = sorted(v for v in values if isinstance(v, int | float))
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


_MEDIAN_KEYS = ("images_per_sec_median", "first_step_seconds")


def summarize_repeats(repeats: list[list[dict]]) -> list[dict]:
    """Per model, the median over repeats of each kind's speed and compile seconds and of each
    per-repeat ratio (the ratio of medians could pair a fast JAX repeat with a slow PyTorch one)."""
    rows = []
    for model_rows in zip(*repeats, strict=True):
        row = {"model": model_rows[0]["model"], "repeats": len(model_rows)}
        for kind in ("jax_plain", "jax_fast", "jax_fast_cached_compile", "torch"):
            measured = [r[kind] for r in model_rows if kind in r and "error" not in r[kind]]
            if kind in model_rows[0] and not measured:
                row[kind] = model_rows[0][kind]  # every repeat failed: keep the first error
            elif measured:
                row[kind] = {"batch_size": measured[0].get("batch_size")}
                for key in _MEDIAN_KEYS:
                    row[kind][key] = _median([m.get(key) for m in measured])
                    row[kind][f"{key}_repeats"] = [m.get(key) for m in measured]
        for ratio in ("ratio_jax_plain_vs_torch", "ratio_jax_fast_vs_torch"):
            values = [r.get(ratio) for r in model_rows]
            if any(v is not None for v in values):
                row[ratio] = _median(values)
                row[f"{ratio}_repeats"] = values
        rows.append(row)
    return rows


def _cell(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _table(rows: list[dict]) -> str:
    header = (
        f"{'model':<9} {'batch':>5} {'JAX plain':>10} {'JAX fast':>9} {'PyTorch':>8} "
        f"{'fast/pt':>7} {'plain/pt':>8} {'compile s':>9} {'cached s':>8} {'pt 1st s':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        fast, plain, pt = row["jax_fast"], row["jax_plain"], row.get("torch", {})
        lines.append(
            f"{row['model']:<9} {_cell(fast.get('batch_size'), 'd'):>5} "
            f"{_cell(plain.get('images_per_sec_median'), ',.0f'):>10} "
            f"{_cell(fast.get('images_per_sec_median'), ',.0f'):>9} "
            f"{_cell(pt.get('images_per_sec_median'), ',.0f'):>8} "
            f"{_cell(row.get('ratio_jax_fast_vs_torch'), '.2f'):>7} "
            f"{_cell(row.get('ratio_jax_plain_vs_torch'), '.2f'):>8} "
            f"{_cell(fast.get('first_step_seconds'), '.1f'):>9} "
            f"{_cell(row['jax_fast_cached_compile'].get('first_step_seconds'), '.1f'):>8} "
            f"{_cell(pt.get('first_step_seconds'), '.2f'):>8}"
        )
        errors = [v["error"] for v in row.values() if isinstance(v, dict) and "error" in v]
        lines.extend(f"  {error}" for error in errors)
    return "\n".join(lines)


def _machine() -> dict:
    import jax

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "threads": _threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    return info


def main(argv):
    del argv
    if _CHILD.value:
        from cnnjax import fast_paths

        # In the child only: the parent's XLA_FLAGS pass to every child, plain ones included.
        fast_paths.enable()
        if os.environ.get("CNNJAX_SUITE_CACHE"):
            fast_paths.enable_compilation_cache(os.environ["CNNJAX_SUITE_CACHE"])
        result = _child(_CHILD.value, _MODELS.value[0], _WINDOWS.value)
        print(json.dumps(result))
        return
    unknown = sorted(set(_MODELS.value) - set(SETTINGS))
    if unknown:
        raise app.UsageError(f"unknown --models {unknown}: choose from {', '.join(SETTINGS)}")
    with_torch = _torch_available()
    machine = _machine()
    print(
        f"{machine['cpu']}, {machine['threads']} threads, jax {machine['jax']} "
        f"({machine['backend']}); PyTorch: {'yes' if with_torch else 'not installed'}",
        flush=True,
    )
    repeats = []
    for repeat in range(_REPEATS.value):
        rows = []
        for model in _MODELS.value:
            rows.append(_measure_model(model, _WINDOWS.value, with_torch))
            print(f"  repeat {repeat + 1}/{_REPEATS.value}: measured {model}", flush=True)
        repeats.append(rows)
    if len(repeats) > 1:
        rows = summarize_repeats(repeats)
    results = {"machine": machine, "train_step": rows}
    if len(repeats) > 1:
        results["repeats"] = repeats
    if _PIPELINE.value:
        results["input_pipeline"] = _run_child("pipeline", "lenet5", _WINDOWS.value)
    over = f"; medians over {len(repeats)} repeats" if len(repeats) > 1 else ""
    print(f"\ntrain step, images/s (median of windows{over}); ratios JAX / PyTorch")
    print(_table(rows))
    pipeline = results.get("input_pipeline", {})
    if "error" in pipeline:
        print(f"\ninput pipeline: {pipeline['error']}")
    elif pipeline:
        speeds = ", ".join(
            f"{name} {value['images_per_sec_median']:,.0f}"
            for name, value in pipeline.items()
            if isinstance(value, dict)
        )
        print(f"\ninput pipeline (Fashion-MNIST, batch 128), images/s: {speeds}")
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)

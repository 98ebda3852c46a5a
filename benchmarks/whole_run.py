"""A whole `cnnjax train` run against the bare jitted train step of the same model and batch.

    .venv/bin/python benchmarks/whole_run.py                          # lenet5 and resnet20, 3 each
    .venv/bin/python benchmarks/whole_run.py --cases=lenet5 --repeats=1

The bare step is the run's own jitted step (`make_steps` of the recipe's step options, with
the training split's on-device normalization), called in a loop on one uint8 batch of the
training split that stays on the device: nothing but compute. The whole run is
`train_and_evaluate` of the same config for `steps` steps, input pipeline, host-to-device
transfer, metrics, the progress bar, evaluations and checkpoints included. Its training
throughput is the one the run reports (results.json `train_images_per_sec`: the training steps'
wall time, evaluations and checkpoint saves excluded). Each measurement runs in a fresh process;
the figures go to benchmarks/results/whole_run.json and a table on stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "lenet5_fashion_mnist.py")
# What each case changes in the default recipe (Fashion-MNIST, batch 128, batch norm, flips).
CASES = {
    "lenet5": {"train.steps": 2000},
    # The ResNet-20 run: SGD momentum, batch norm, batch 128 on 28x28 Fashion-MNIST.
    "resnet20": {
        "model.name": "resnet20",
        "optimizer.name": "momentum",
        "optimizer.learning_rate": 0.05,
        "train.steps": 150,
    },
}
BARE_WINDOWS, BARE_STEPS = 5, {"lenet5": 100, "resnet20": 8}


def _config(case: str):
    from cnnjax.config_loader import load_config

    overrides = dict(CASES[case])
    overrides.pop("model.name", None)
    config = load_config(RECIPE, overrides)
    if "model.name" in CASES[case]:
        config.model.name = CASES[case]["model.name"]
        config.model.options = {}  # LeNet-5's pooling/locally_connected are not ResNet options
    return config


def measure_bare(case: str) -> dict:
    """Images/s of the run's jitted train step on one device batch (median of windows)."""
    import jax

    from cnnjax.data.inputs import make_input
    from cnnjax.train import run
    from cnnjax.train.state import create_train_state

    config = run.resolve_backend_choices(_config(case))
    data = make_input(config)
    schedule = run.schedule_of(config, data.num_train)
    model = run.build_model(config, data.num_classes)
    tx = run.make_run_optimizer(config, schedule)
    state = create_train_state(model, tx, input_shape=data.input_shape, seed=config.seed)
    options = run.step_options(config, data.num_classes, data.normalization)
    train = run.make_steps(options).train
    batch = jax.device_put(next(iter(data.train_batches(0))))
    state, _ = train(state, batch)  # compiles
    jax.block_until_ready(state)
    speeds = []
    for _ in range(BARE_WINDOWS):
        start = time.perf_counter()
        for _ in range(BARE_STEPS[case]):
            state, _ = train(state, batch)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        speeds.append(BARE_STEPS[case] * config.data.batch_size / seconds)
    return {"images_per_sec": statistics.median(speeds), "windows": speeds}


def measure_run(case: str) -> dict:
    """The training throughput a whole `train_and_evaluate` run reports, and its wall time."""
    from cnnjax.train import train_and_evaluate

    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        results = train_and_evaluate(_config(case), workdir).results
        wall = time.perf_counter() - start
    return {
        "images_per_sec": results["train_images_per_sec"],
        "wall_seconds": wall,
        "steps": results["steps"],
        "test_accuracy": results["test_accuracy"],
    }


def _in_fresh_process(case: str, kind: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, f"--one={case}:{kind}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    args = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    if "one" in args:
        from cnnjax import fast_paths

        fast_paths.enable()  # as the `cnnjax` command does before JAX starts
        case, kind = args["one"].split(":")
        result = measure_bare(case) if kind == "bare" else measure_run(case)
        print(json.dumps(result))
        return
    cases = args.get("cases", ",".join(CASES)).split(",")
    repeats = int(args.get("repeats", 3))
    rows = []
    for case in cases:
        for repeat in range(repeats):
            bare = _in_fresh_process(case, "bare")
            whole = _in_fresh_process(case, "run")
            ratio = whole["images_per_sec"] / bare["images_per_sec"]
            rows.append(
                {"case": case, "repeat": repeat, "bare": bare, "run": whole, "ratio": ratio}
            )
            print(
                f"{case:9s} bare {bare['images_per_sec']:9,.0f} img/s   whole run "
                f"{whole['images_per_sec']:9,.0f} img/s   run / bare {ratio:.3f}",
                flush=True,
            )
    summary = {
        case: statistics.median(r["ratio"] for r in rows if r["case"] == case) for case in cases
    }
    print("median run / bare:", {k: round(v, 3) for k, v in summary.items()})
    with open(os.path.join(ROOT, "benchmarks", "results", "whole_run.json"), "w") as f:
        json.dump(
            {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "threads": len(os.sched_getaffinity(0)),
                "median_ratio": summary,
                "runs": rows,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

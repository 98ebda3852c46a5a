"""What CPU results independent of the core count would cost: one XLA:CPU thread against two.

    .venv/bin/python benchmarks/thread_count.py [--repeats=3] [--steps=60]
        [--cpu_lists=0 --cpu_lists=0,1] [--json=benchmarks/results/thread_count.json]

XLA:CPU runs on as many threads as the process has CPUs, and a float reduction split across
threads adds its parts in another order: the same run on 1 and on 2 cores ends with different
numbers (`cnnjax sweep --workers=1` and `--workers=2` gave test accuracy 0.7670 and 0.7660 for
one run id). Always using one thread would make CPU results equal everywhere; this measures the
price. It trains the default recipe's `:smoke` variant for --steps steps in fresh processes
pinned with `taskset -c LIST` (and OMP_NUM_THREADS set to match, as the sweep does), --repeats
times per CPU list, interleaved so that load on the machine hits every setting alike, and reports
per setting the final test accuracy and loss, whether they are bitwise equal across repeats and
across settings, and the median `train_images_per_sec` of results.json: the speed ratio of one
thread to two is the price. Writes every run's figures to the JSON file and prints a table.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECIPE = os.path.join(ROOT, "configs", "lenet5_fashion_mnist.py") + ":smoke"
# Where the tests prepare Fashion-MNIST (tests/conftest.py); TFDS_DATA_DIR overrides it.
DATA_DIR = os.path.join(ROOT, ".cache", "tensorflow_datasets")
FIELDS = ("test_accuracy", "test_loss", "train_loss", "train_images_per_sec", "cpu_threads")

_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per CPU list.")
_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run (the smoke variant's data).")
_CPU_LISTS = flags.DEFINE_multi_string("cpu_lists", ["0", "0,1"], "taskset CPU lists to compare.")
_JSON = flags.DEFINE_string("json", os.path.join(HERE, "results", "thread_count.json"), "Output.")


def train_once(cpu_list: str, steps: int) -> dict:
    """One `cnnjax train` pinned to `cpu_list`; results.json's FIELDS plus wall seconds."""
    threads = str(len(cpu_list.split(",")))  # "0,1" -> 2 (ranges like 0-3 are not counted)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.setdefault("TFDS_DATA_DIR", DATA_DIR)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = tempfile.mkdtemp(prefix="cnnjax_threads_")
    try:
        command = ["taskset", "-c", cpu_list, sys.executable, "-m", "cnnjax.cli", "train"]
        command += [f"--config={RECIPE}", f"--workdir={workdir}", f"--config.train.steps={steps}"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(
                f"taskset -c {cpu_list}: cnnjax train exited {done.returncode}: {tail}"
            )
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {key: results.get(key) for key in (*FIELDS, "wall_seconds")}


def _bitwise_equal(values: list[float]) -> bool:
    return len({float(v).hex() for v in values}) == 1


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per CPU list: values, equality across repeats, median speed; then across lists."""
    settings = {}
    for cpu_list, results in runs.items():
        settings[cpu_list] = {
            "cpu_threads": sorted({r["cpu_threads"] for r in results}),
            "test_accuracy": [r["test_accuracy"] for r in results],
            "test_loss": [r["test_loss"] for r in results],
            "equal_across_repeats": all(
                _bitwise_equal([r[key] for r in results]) for key in ("test_accuracy", "test_loss")
            ),
            "train_images_per_sec_median": statistics.median(
                r["train_images_per_sec"] for r in results
            ),
            "runs": results,
        }
    firsts = [results[0] for results in runs.values()]
    speeds = [s["train_images_per_sec_median"] for s in settings.values()]
    return {
        "settings": settings,
        "equal_across_settings": {
            key: _bitwise_equal([r[key] for r in firsts]) for key in ("test_accuracy", "test_loss")
        },
        # e.g. 1 thread / 2 threads: the share of the speed that thread independence keeps
        "speed_ratio_first_to_last": speeds[0] / speeds[-1],
    }


def table(summary: dict) -> str:
    header = (
        f"{'taskset -c':<11} {'threads':>7} {'runs':>4} {'test_accuracy':>13} "
        f"{'test_loss':>12} {'equal across repeats':>20} {'images/s (median)':>17}"
    )
    lines = [header, "-" * len(header)]
    for cpu_list, s in summary["settings"].items():
        lines.append(
            f"{cpu_list:<11} {','.join(map(str, s['cpu_threads'])):>7} {len(s['runs']):>4} "
            f"{s['test_accuracy'][0]:>13.4f} {s['test_loss'][0]:>12.8f} "
            f"{'yes' if s['equal_across_repeats'] else 'NO':>20} "
            f"{s['train_images_per_sec_median']:>17,.0f}"
        )
    across = summary["equal_across_settings"]
    names = list(summary["settings"])
    lines += [
        "",
        "bitwise equal across thread counts: "
        + ", ".join(f"{key} {'yes' if equal else 'no'}" for key, equal in across.items()),
        f"speed, taskset -c {names[0]} / taskset -c {names[-1]}: "
        f"{summary['speed_ratio_first_to_last']:.2f}",
    ]
    return "\n".join(lines)


def _machine() -> dict:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),  # the speeds are only as quiet as the machine was
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
    if shutil.which("taskset") is None:
        raise app.UsageError("taskset is not on PATH (util-linux): it pins each run to its CPUs")
    machine = _machine()
    print(f"{machine['cpu']}, CPUs {machine['cpus_available']}, load {machine['load_average']}")
    runs: dict[str, list[dict]] = {cpu_list: [] for cpu_list in _CPU_LISTS.value}
    for repeat in range(_REPEATS.value):
        for cpu_list in runs:  # interleaved: a busy moment slows every setting alike
            runs[cpu_list].append(train_once(cpu_list, _STEPS.value))
            print(f"  repeat {repeat + 1}, taskset -c {cpu_list}: {runs[cpu_list][-1]}", flush=True)
    summary = summarize(runs)
    recipe = RECIPE.removeprefix(ROOT + os.sep)
    print(f"\n{recipe}, {_STEPS.value} steps, {_REPEATS.value} repeats")
    print(table(summary))
    results = {"machine": machine, "recipe": recipe, "steps": _STEPS.value, **summary}
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)

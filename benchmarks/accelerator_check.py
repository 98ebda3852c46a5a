"""One call that tells what cnnjax does on a GPU: devices, speed against PyTorch, the recipe.

    benchmarks/accelerator_check.sh [--json=benchmarks/results/accelerator_check.json]
        [--models=lenet5,resnet20,resnet18,resnet50] [--budget-seconds=450]
    benchmarks/accelerator_check.sh --cpu-smoke     # the same on CPU at tiny sizes (the test)

The .sh installs cnnjax's missing dependencies from the wheels of accelerator_wheels.sh first.
Measures, each part in a fresh process on an accelerator (nothing one compiled or allocated
helps or hinders the next; a part that fails or hangs is recorded in the JSON, and the others
still run):

- the devices JAX sees, and the versions of JAX, its plugin, Flax and PyTorch;
- cnnjax's jitted train step (SGD with momentum, synthetic images) of LeNet-5, CIFAR ResNet-20,
  ResNet-18 and ResNet-50 in float32 and bfloat16: compile seconds, and images/s as the median
  of timed windows after warm-up; the same networks in PyTorch (torch_reference.py's twins) on
  the same GPU, eager and with torch.compile, channels_last, bf16 by torch.autocast;
- a few LeNet-5 train steps on the accelerator and on the CPU from the same state and batches:
  the largest difference of the parameters after them, at JAX's default precision (TF32 on
  NVIDIA GPUs) and at "highest";
- the default recipe (configs/lenet5_fashion_mnist.py) end to end: seconds and test accuracy.

Prints a table and writes everything to the JSON file. The whole check keeps to
`--budget-seconds`: a part that would start after it is spent is skipped (and says so), the
optional torch.compile parts first. `--cpu-smoke` runs every part on the CPU with 4 images a
step, ResNets at 8x8 pixels, one timed step and XLA's backend optimizations off, the JAX parts
in one process (about 25 CPU seconds on 2 cores; the test suite runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time

from accelerator_parts import ACCELERATOR, CPU_SMOKE, HERE, MODELS, Mode, run_child

RESULT_MARK = "ACCELERATOR_CHECK_RESULT "  # a child's result line, whatever else it printed
# The targets of benchmarks/README.md, judged in the accelerator mode only.
TARGET_MODEL, TARGET_DTYPE, TARGET_IMAGES_PER_SEC = "resnet50", "bfloat16", 3000

# ----------------------------------------------------------------------------- the parent


@dataclasses.dataclass(frozen=True)
class Part:
    """Measurements run together in one fresh process, stopped after `timeout` seconds.
    `optional` parts (torch.compile) start only with `OPTIONAL_SECONDS` of the budget left."""

    items: tuple[dict, ...]
    timeout: float
    optional: bool = False


OPTIONAL_SECONDS = 90  # torch.compile of a ResNet's train step takes about a minute
MIN_SECONDS = 15  # below this, a part is skipped rather than started to be stopped


def spawn(part: Part, mode: Mode, timeout: float) -> list[dict]:
    """Runs `part` in a child process (its own process group, all killed at the timeout)."""
    command = [sys.executable, os.path.abspath(__file__), f"--child={json.dumps(part.items)}"]
    env = dict(os.environ)
    if mode is CPU_SMOKE:
        command.append("--cpu-smoke")
        env["JAX_PLATFORMS"] = "cpu"  # on a GPU machine too
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # torch.compile's workers go with the child at the timeout
    )
    stopped = None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        stopped = f"stopped after {timeout:.3g} s"
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = [line for line in err.splitlines() if line.strip()][-15:]
    error = stopped or f"exit {process.returncode}: {tail[-1] if tail else 'no output'}"
    return [{"error": error, "stderr_tail": tail} for _ in part.items]


def plan(mode: Mode, models: list[str], with_torch: bool) -> list[Part]:
    """The parts in the order they run: what matters most first, torch.compile of the target
    model before the recipe, the other torch.compile runs last (optional)."""
    steps = [{"model": m, "dtype": d} for m in models for d in mode.dtypes[m]]
    jax_steps = [{"kind": "jax", **step} for step in steps]
    eager = [{"kind": "torch", **step, "compiled": False} for step in steps]
    first, recipe = [{"kind": "devices"}, {"kind": "cpu_diff"}], {"kind": "recipe"}
    if mode is CPU_SMOKE:  # nothing to isolate at these sizes; each process start costs 2 s
        return [Part((*first, *jax_steps, recipe), 600)] + (
            [Part(tuple(eager), 600)] if with_torch else []
        )
    parts = [Part((first[0],), 120), Part((first[1],), 180)]
    parts += [Part((item,), 240) for item in jax_steps]
    parts += [Part((item,), 180) for item in eager] if with_torch else []
    if not with_torch or not mode.torch_compile:
        return [*parts, Part((recipe,), 300)]
    # torch.compile: the target model and dtype first, then the larger models.
    order = sorted(steps, key=lambda s: (-MODELS.index(s["model"]), s["dtype"] != TARGET_DTYPE))
    compiled = [Part(({"kind": "torch", **s, "compiled": True},), 300, True) for s in order]
    return [*parts, compiled[0], Part((recipe,), 300), *compiled[1:]]


def run_parts(parts: list[Part], mode: Mode, budget_seconds: float) -> list[tuple[dict, dict]]:
    """(item, result) of every measurement; those the budget leaves no time for say so, and
    in the accelerator mode all after the first when JAX sees no accelerator."""
    deadline = time.monotonic() + budget_seconds
    done, stop = [], None
    for part in parts:
        left = deadline - time.monotonic()
        if stop or left < (OPTIONAL_SECONDS if part.optional else MIN_SECONDS):
            why = stop or f"skipped: {max(left, 0):.0f} s of the {budget_seconds:g} s budget left"
            done += [(item, {"skipped": why}) for item in part.items]
            continue
        print("  " + ", ".join(map(_label, part.items)), flush=True)
        start, cpu = time.monotonic(), _children_cpu_seconds()
        outputs = spawn(part, mode, min(part.timeout, left))
        cost = {"wall": time.monotonic() - start, "cpu": _children_cpu_seconds() - cpu}
        done += [
            (item, {**out, "part_seconds": cost})
            for item, out in zip(part.items, outputs, strict=True)
        ]
        devices = outputs[0] if part.items[0]["kind"] == "devices" else {}
        if mode is ACCELERATOR and devices and devices.get("backend") in (None, "cpu"):
            found = f"failed ({devices['error']})" if "error" in devices else "found no accelerator"
            stop = f"skipped: JAX {found}; without a GPU, run --cpu-smoke"
    return done


def _label(item: dict) -> str:
    compiled = {True: "torch.compile", False: "eager"}.get(item.get("compiled"), "")
    return " ".join(filter(None, (item["kind"], item.get("model"), item.get("dtype"), compiled)))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def assemble(done: list[tuple[dict, dict]], mode: Mode, models: list[str], torch_why: str):
    """The JSON document: devices, train-step rows, recipe, accelerator-vs-CPU difference."""
    rows = {(m, d): {"model": m, "dtype": d} for m in models for d in mode.dtypes[m]}
    results = {"train_step": list(rows.values())}
    for item, output in done:
        if item["kind"] not in ("jax", "torch"):
            results[item["kind"]] = output
            continue
        key = "jax" if item["kind"] == "jax" else "torch_eager"
        key = "torch_compile" if item.get("compiled") else key
        rows[item["model"], item["dtype"]][key] = output
    for row in rows.values():
        for key in ("torch_eager", "torch_compile"):
            if key not in row:
                row[key] = {"skipped": torch_why or "torch.compile is not run in --cpu-smoke"}
        speeds = [row[k].get("images_per_sec_median") for k in ("torch_eager", "torch_compile")]
        best = max(filter(None, speeds), default=None)
        jax_speed = row.get("jax", {}).get("images_per_sec_median")
        row["jax_vs_torch"] = jax_speed / best if jax_speed and best else None
    results["targets"] = judge_targets(rows.get((TARGET_MODEL, TARGET_DTYPE)), mode)
    return results


def judge_targets(row: dict | None, mode: Mode) -> dict:
    if mode is CPU_SMOKE or row is None:
        return {"judged": False, "why": "the targets are for ResNet-50 bf16 on one H100/H200"}
    speed = row.get("jax", {}).get("images_per_sec_median")
    ratio = row["jax_vs_torch"]
    return {
        "judged": True,
        "resnet50_bf16_images_per_sec": speed,
        "at_least_3000_images_per_sec": None if speed is None else speed >= TARGET_IMAGES_PER_SEC,
        "jax_vs_torch": ratio,
        "at_least_pytorch": None if ratio is None else ratio >= 1.0,
    }


def _cell(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _problem(result: dict) -> str | None:
    return result.get("error") or result.get("skipped")


def report(results: dict, mode: Mode) -> str:
    """The table and the lines printed at the end."""
    devices = results.get("devices", {})
    versions = ", ".join(f"{k} {v}" for k, v in devices.get("versions", {}).items())
    lines = [
        f"devices: {devices.get('count', '?')} x {devices.get('kind', '?')} "
        f"({devices.get('backend', _problem(devices))}); {versions}",
        f"\ntrain step, images/s (median of {mode.windows} timed window(s) after {mode.warmup} "
        "warm-up steps); JAX/PT against the faster PyTorch",
    ]
    header = (
        f"{'model':<9} {'dtype':<9} {'batch':>5} {'image':>11} {'JAX':>9} {'compile s':>9} "
        f"{'PT eager':>9} {'PT comp.':>9} {'PT comp. s':>10} {'JAX/PT':>6}"
    )
    lines += [header, "-" * len(header)]
    notes = []
    for row in results["train_step"]:
        jax_, eager, compiled = row.get("jax", {}), row["torch_eager"], row["torch_compile"]
        image = "x".join(map(str, jax_.get("image_shape", []))) or "-"
        lines.append(
            f"{row['model']:<9} {row['dtype']:<9} {_cell(jax_.get('batch_size'), 'd'):>5} "
            f"{image:>11} {_cell(jax_.get('images_per_sec_median'), ',.0f'):>9} "
            f"{_cell(jax_.get('compile_seconds'), '.1f'):>9} "
            f"{_cell(eager.get('images_per_sec_median'), ',.0f'):>9} "
            f"{_cell(compiled.get('images_per_sec_median'), ',.0f'):>9} "
            f"{_cell(compiled.get('first_step_seconds'), '.1f'):>10} "
            f"{_cell(row['jax_vs_torch'], '.2f'):>6}"
        )
        for key in ("jax", "torch_eager", "torch_compile"):
            result = row.get(key, {})
            error = (
                result.get("error") and f"{row['model']} {row['dtype']} {key}: {result['error']}"
            )
            note = error or result.get("skipped")
            if note and note not in notes:
                notes.append(note)
    lines += [f"  {note}" for note in notes]
    lines += [_diff_line(results.get("cpu_diff", {})), _recipe_line(results.get("recipe", {}))]
    lines.append(_targets_line(results["targets"]))
    return "\n".join(lines)


def _diff_line(diff: dict) -> str:
    if _problem(diff):
        return f"\naccelerator vs CPU: {_problem(diff)}"
    found = ", ".join(
        f"{diff[p]['max_abs_param_difference']:.2g} at {p} precision"
        for p in ("default", "highest")
        if p in diff
    )
    return (
        f"\n{diff['accelerator']} vs {diff['cpu']}, {diff['steps']} {diff['model']} steps of "
        f"{diff['batch_size']}, float32: max |parameter difference| {found} "
        f"(parameters up to {diff['max_abs_param']:.2g})"
    )


def _recipe_line(recipe: dict) -> str:
    if _problem(recipe):
        return f"recipe: {_problem(recipe)}"
    return (
        f"recipe {recipe['recipe']}: test accuracy {recipe['test_accuracy']:.4f} in "
        f"{recipe['seconds']:.1f} s ({_cell(recipe['train_images_per_sec'], ',.0f')} train "
        f"images/s, compile {_cell(recipe['compile_seconds'], '.1f')} s)"
    )


def _targets_line(targets: dict) -> str:
    if not targets["judged"]:
        return f"targets: not judged ({targets['why']})"
    yes = {True: "met", False: "NOT met", None: "unmeasured"}
    return (
        f"targets, ResNet-50 bf16: {_cell(targets['resnet50_bf16_images_per_sec'], ',.0f')} "
        f"images/s >= 3,000: {yes[targets['at_least_3000_images_per_sec']]}; "
        f"{_cell(targets['jax_vs_torch'], '.2f')}x PyTorch >= 1.0x: "
        f"{yes[targets['at_least_pytorch']]}"
    )


def torch_missing() -> str:
    """Why the PyTorch columns are empty, or "" when PyTorch is there (not imported here)."""
    if importlib.util.find_spec("torch") is None:
        return f"skipped: PyTorch is not installed for {sys.executable}"
    return ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="Everything on CPU, tiny.")
    parser.add_argument("--json", help="Output file (default: benchmarks/results/...).")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated subset.")
    parser.add_argument("--budget-seconds", type=float, default=450, help="For all parts.")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a part's items, as JSON
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown --models {unknown}: choose from {', '.join(MODELS)}")
    name = "accelerator_check_cpu_smoke" if args.cpu_smoke else "accelerator_check"
    args.json = args.json or os.path.join(HERE, "results", f"{name}.json")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    mode = CPU_SMOKE if args.cpu_smoke else ACCELERATOR
    if args.child:
        results = run_child(mode, json.loads(args.child))
        print(RESULT_MARK + json.dumps(results), flush=True)
        return
    start = time.monotonic()
    torch_why = torch_missing()
    print(f"accelerator check ({mode.name}), PyTorch: {torch_why or 'yes'}", flush=True)
    done = run_parts(plan(mode, args.models, not torch_why), mode, args.budget_seconds)
    results = {
        "mode": mode.name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": [os.path.basename(sys.argv[0]), *argv],
        "budget_seconds": args.budget_seconds,
        **assemble(done, mode, args.models, torch_why),
    }
    results["torch"] = {"available": not torch_why, "why": torch_why or None}
    results["elapsed_seconds"] = time.monotonic() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as file:
        json.dump(results, file, indent=2)
    print("\n" + report(results, mode))
    print(f"\n{results['elapsed_seconds']:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])

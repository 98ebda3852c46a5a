"""`cnnjax eval --shift=0,1,2 --rotate=0,10,45 --scale=0.9,1,1.1 --permute_pixels=SEED`: how a
trained run's accuracy and loss change when its evaluation images are moved, turned, zoomed or
shuffled (cnnjax/data/perturbations.py).

Each value is one evaluation of the whole evaluation split with the run's own compiled
evaluator (`TrainedRun.evaluation_sums(transform=...)`; the images keep their shape, so it
compiles once). The transforms apply to the images the model takes (after the pipeline's
upscaling; for streaming datasets the resized centre crop). A shift of k pixels is evaluated in
each direction (right, left, down, up; for 1-D inputs along the sequence only) and its curve is
their mean; the identities (shift 0, rotation 0, scale 1) reuse the unperturbed evaluation.

Written to `DIR/eval/invariance_step_<STEP>_<SPLIT>[_ema]/`: `<transform>.csv` (value,
accuracy, loss, n, and accuracy_<direction> / loss_<direction> for shifts), `<transform>.png`
and invariance.json (merged with the transforms of earlier calls on the same checkpoint).
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from cnnjax.data import perturbations
from cnnjax.errors import UserError
from cnnjax.inspect.evaluation_report import (
    load_for_evaluation,
    run_description,
    split_slug,
    write_results,
)
from cnnjax.train.evaluation import loss_and_accuracy
from cnnjax.train.trained_run import TrainedRun

Transform = Callable[[np.ndarray], np.ndarray]
# (dy, dx) of a shift by one pixel in each direction, as the CSV columns name them.
SHIFT_DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
SEQUENCE_DIRECTIONS = ("right", "left")  # a 1-D input moves along its sequence only
UNITS = {
    "shift": "pixels",
    "rotate": "degrees",
    "scale": "factor",
    "permute_pixels": "seed",
}
IDENTITY = {"shift": 0, "rotate": 0, "scale": 1}


def perturbation(kind: str, value: float, spatial_dims: int = 2, direction: str = "") -> Transform:
    """The uint8 image transform [B, *input_shape] -> same of `kind` (shift, rotate, scale or
    permute_pixels) and `value`, for inputs with `spatial_dims` axes before their channels
    (1: sequences [B, L, F], moved along L; 2: images; 3: clips [B, T, H, W, C], each frame
    alike). `direction`: a key of SHIFT_DIRECTIONS, for shifts."""
    if kind == "shift":
        dy, dx = (int(value) * step for step in SHIFT_DIRECTIONS[direction])
        transform = functools.partial(perturbations.shift_images, dy=dy, dx=dx)
    elif kind == "rotate":
        transform = functools.partial(perturbations.rotate_images, degrees=float(value))
    elif kind == "scale":
        transform = functools.partial(perturbations.scale_images, factor=float(value))
    elif kind == "permute_pixels":
        transform = functools.partial(perturbations.permute_pixels, seed=int(value))
    else:
        raise ValueError(f"unknown transform {kind!r}: choose one of {', '.join(UNITS)}")
    if spatial_dims != 1:
        return transform
    # A sequence [B, L, F] is a 1 x L image with F channels.
    return lambda images: transform(images[:, None])[:, 0]


def _metrics(sums: dict) -> dict:
    return {**loss_and_accuracy(sums), "n": int(sums["count"])}


def _pooled(sums: list[dict]) -> dict:
    """The counts and loss sums of several evaluations added up, exactly (float64 holds any
    sum of a few float32 values): their metrics are the means over the evaluations."""
    return {
        "count": sum(int(s["count"]) for s in sums),
        "top_1_correct": sum(int(s["top_1_correct"]) for s in sums),
        "loss_sum": sum(float(s["loss_sum"]) for s in sums),
    }


def _row(kind: str, value, evaluate, baseline: dict, spatial_dims: int) -> dict:
    """One value of one transform: its metrics (reusing `baseline`, the unperturbed sums, for
    an identity); a shift's are pooled over its directions, which the row keeps too."""
    if kind == "shift":
        names = SEQUENCE_DIRECTIONS if spatial_dims == 1 else tuple(SHIFT_DIRECTIONS)
        per_direction = {
            name: baseline
            if value == 0
            else evaluate(perturbation(kind, value, spatial_dims, name))
            for name in names
        }
        pooled = _metrics(_pooled(list(per_direction.values())))
        pooled["n"] = int(baseline["count"])  # the examples; each direction saw them all
        directions = {name: _metrics(sums) for name, sums in per_direction.items()}
        return {"value": value, **pooled, "directions": directions}
    if kind in IDENTITY and value == IDENTITY[kind]:
        return {"value": value, **_metrics(baseline)}
    return {"value": value, **_metrics(evaluate(perturbation(kind, value, spatial_dims)))}


def invariance_curves(
    evaluate: Callable[[Transform | None], dict],
    *,
    spatial_dims: int = 2,
    shifts: Sequence[int] = (),
    rotations: Sequence[float] = (),
    scales: Sequence[float] = (),
    permutation_seeds: Sequence[int] = (),
) -> dict:
    """Accuracy and loss for each transform and value.

    `evaluate(transform)` returns the evaluator's sums over the evaluation split with
    `transform` applied to its uint8 images (None: unperturbed), e.g.
    `TrainedRun.evaluation_sums`; `spatial_dims` as in `perturbation`. Returns {'baseline':
    {accuracy, loss, n}, kind: [row, ...]} for each kind given values (shift, rotate, scale,
    permute_pixels); a row has value, accuracy, loss and n, and for shifts `directions` {name:
    {accuracy, loss, n}} of which accuracy and loss are the means.
    """
    check_values(shifts, scales)
    on_host = lambda transform: _host_sums(evaluate(transform))  # noqa: E731
    baseline = on_host(None)
    curves: dict = {"baseline": _metrics(baseline)}
    asked = {"shift": shifts, "rotate": rotations, "scale": scales}
    asked["permute_pixels"] = permutation_seeds
    for kind, values in asked.items():
        if values:
            curves[kind] = [_row(kind, value, on_host, baseline, spatial_dims) for value in values]
    return curves


def _host_sums(sums: dict) -> dict:
    """The sums that the curves use, as numpy values on the host."""
    return {key: np.asarray(sums[key]) for key in ("count", "top_1_correct", "loss_sum")}


def parse_values(
    *,
    shift: Sequence[str] = (),
    rotate: Sequence[str] = (),
    scale: Sequence[str] = (),
    permute_pixels: Sequence[str] = (),
) -> dict:
    """The texts of the --shift, --rotate, --scale and --permute_pixels lists -> the keyword
    arguments of `evaluate_invariance` (shifts, rotations, scales, permutation_seeds); one line
    for a text that is not such a number."""
    parsed = {}
    for flag, texts, kind, key in (
        ("shift", shift, int, "shifts"),
        ("rotate", rotate, float, "rotations"),
        ("scale", scale, float, "scales"),
        ("permute_pixels", permute_pixels, int, "permutation_seeds"),
    ):
        try:
            parsed[key] = [kind(text) for text in texts]
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise UserError(f"--{flag}={','.join(texts)}: give {what}, e.g. 0,1,2") from None
    check_values(parsed["shifts"], parsed["scales"])
    return parsed


def check_values(shifts: Sequence[int], scales: Sequence[float]) -> None:
    """One line for a negative shift (each is evaluated in every direction) or a scale <= 0."""
    for shift in shifts:
        if shift < 0:
            raise UserError(f"--shift={shift}: give pixels >= 0 (each is tried in every direction)")
    for scale in scales:
        if scale <= 0:
            raise UserError(f"--scale={scale}: give factors > 0 (1: the image as it is)")


def check_run(trained: TrainedRun, rotations: Sequence[float], scales: Sequence[float]) -> int:
    """The number of spatial axes of the run's inputs, after one line for what cannot be
    evaluated: dense tasks, and rotations or zooms of 1-D or 3-D inputs."""
    task = trained.config.data.task
    if task == "segmentation":
        raise UserError(
            "invariance evaluation is for classification: a segmentation run's labels would "
            "need the same transform"
        )
    spatial_dims = len(trained.input_shape) - 1
    if spatial_dims != 2 and (rotations or scales):
        shape = "x".join(map(str, trained.input_shape))
        raise UserError(
            f"--rotate and --scale need 2-D images [H, W, C]; this run's inputs are {shape} "
            "(use --shift or --permute_pixels)"
        )
    return spatial_dims


def run_evaluator(trained: TrainedRun, use_ema: bool = False) -> Callable:
    """`evaluate(transform)` for `invariance_curves`: the run's evaluation sums with `transform`
    applied to its images. On a run trained on shuffled pixels (data.pixel_permutation_seed)
    the transform acts on the unshuffled image (a shift moves the object, not the shuffled
    pattern), which is then shuffled again as the run's inputs are."""
    seed = trained.config.data.get("pixel_permutation_seed", -1)

    def evaluate(transform: Callable | None) -> dict:
        if transform is not None:
            transform = perturbations.under_permutation(transform, seed)
        return trained.evaluation_sums(use_ema=use_ema, transform=transform)

    return evaluate


def evaluate_invariance(
    trained: TrainedRun,
    *,
    shifts: Sequence[int] = (),
    rotations: Sequence[float] = (),
    scales: Sequence[float] = (),
    permutation_seeds: Sequence[int] = (),
    use_ema: bool = False,
    checkpoint: str = "best",
) -> dict:
    """The run's accuracy and loss on its evaluation split under each transform and value:
    `shifts` (pixels, each in 4 directions), `rotations` (degrees counter-clockwise), `scales`
    (zoom factors) and `permutation_seeds` (a fixed shuffle of the pixel positions per seed).

    Writes a CSV and a PNG per transform and invariance.json into
    `DIR/eval/invariance_step_<STEP>_<SPLIT>[_ema]/` and returns the run's description, the
    `invariance_curves` (baseline and a row list per transform) and `paths`. `checkpoint` is
    only recorded.
    """
    spatial_dims = check_run(trained, rotations, scales)
    curves = invariance_curves(
        run_evaluator(trained, use_ema),
        spatial_dims=spatial_dims,
        shifts=shifts,
        rotations=rotations,
        scales=scales,
        permutation_seeds=permutation_seeds,
    )
    result = {**run_description(trained, checkpoint, use_ema), **curves}
    slug = split_slug(trained.config.data.eval_split, use_ema)
    folder = os.path.join(trained.workdir, "eval", f"invariance_step_{trained.step}_{slug}")
    kinds = [kind for kind in UNITS if kind in curves]
    result["paths"] = {"invariance.json": os.path.join(folder, "invariance.json")}
    for kind in kinds:
        for extension in ("csv", "png"):
            name = f"{kind}.{extension}"
            result["paths"][name] = os.path.join(folder, name)
    write_results(folder, functools.partial(write_files, result, kinds))
    return result


def invariance_workdir(
    workdir: str,
    checkpoint: str = "best",
    *,
    shifts: Sequence[int] = (),
    rotations: Sequence[float] = (),
    scales: Sequence[float] = (),
    permutation_seeds: Sequence[int] = (),
    split: str | None = None,
    use_ema: bool = False,
) -> dict:
    """`evaluate_invariance` of checkpoint `checkpoint` (best | latest | STEP) of the run in
    `workdir`, on its evaluation split or TFDS split `split`."""
    check_values(shifts, scales)  # before the restore
    trained = load_for_evaluation(workdir, checkpoint, split=split, use_ema=use_ema)
    return evaluate_invariance(
        trained,
        shifts=shifts,
        rotations=rotations,
        scales=scales,
        permutation_seeds=permutation_seeds,
        use_ema=use_ema,
        checkpoint=checkpoint,
    )


def write_files(result: dict, kinds: Sequence[str], out: str) -> None:
    """`<kind>.csv` and `<kind>.png` for each of `kinds`, and invariance.json (keeping the
    transforms an earlier call wrote for the same checkpoint) into the folder `out`."""
    os.makedirs(out, exist_ok=True)
    for kind in kinds:
        write_csv(os.path.join(out, f"{kind}.csv"), result[kind])
        plot_curve(result, kind).savefig(os.path.join(out, f"{kind}.png"), dpi=120)
    path = os.path.join(out, "invariance.json")
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    merged = {**saved, **result, "paths": {**saved.get("paths", {}), **result["paths"]}}
    with open(path, "w") as f:
        json.dump(merged, f, indent=2)


def write_csv(path: str, rows: list[dict]) -> None:
    """value, accuracy, loss, n, then accuracy_<d> and loss_<d> for each shift direction d."""
    directions = list(rows[0].get("directions", {}))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["value", "accuracy", "loss", "n"]
            + [f"{metric}_{d}" for d in directions for metric in ("accuracy", "loss")]
        )
        for row in rows:
            per_direction = [
                row["directions"][d][metric] for d in directions for metric in ("accuracy", "loss")
            ]
            # repr: the shortest text that reads back as the same float.
            writer.writerow(
                [row["value"], repr(row["accuracy"]), repr(row["loss"]), row["n"]]
                + [repr(v) for v in per_direction]
            )


def plot_curve(result: dict, kind: str) -> Figure:
    """Accuracy (top) and loss (bottom) against the transform's value, the unperturbed run as
    a dashed line; for shifts each direction too. Permutations: bars per seed."""
    rows, baseline = result[kind], result["baseline"]
    fig = Figure(figsize=(6, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, metric in ((top, "accuracy"), (bottom, "loss")):
        if kind == "permute_pixels":
            labels = ["none"] + [f"seed {row['value']}" for row in rows]
            heights = [baseline[metric]] + [row[metric] for row in rows]
            ax.bar(labels, heights, color=["tab:gray"] + ["tab:blue"] * len(rows))
        else:
            values = [row["value"] for row in rows]
            for direction in rows[0].get("directions", {}):
                series = [row["directions"][direction][metric] for row in rows]
                ax.plot(values, series, alpha=0.4, linewidth=1, label=direction)
            ax.plot(values, [row[metric] for row in rows], "o-", color="black", label="mean")
            ax.axhline(baseline[metric], linestyle="--", color="gray", label="unperturbed")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if kind != "permute_pixels":
        top.legend(loc="best", fontsize=8)
    bottom.set_xlabel(f"{kind} ({UNITS[kind]})")
    top.set_title(
        f"{result['model']} on {result['dataset']} {result['split']}, step {result['step']}: {kind}"
    )
    fig.tight_layout()
    return fig


def format_invariance(result: dict) -> str:
    """A short table per transform (value, accuracy, loss) and the folder of the files."""
    baseline = result["baseline"]
    ema = " (EMA weights)" if result["use_ema"] else ""
    lines = [
        f"step {result['step']} (--checkpoint={result['checkpoint']}){ema} of {result['model']} "
        f"on {result['dataset']} {result['split']}: {baseline['n']:,} examples, unperturbed "
        f"accuracy {baseline['accuracy']:.4f}, loss {baseline['loss']:.4f}"
    ]
    for kind in UNITS:
        if kind not in result:
            continue
        note = " (mean of the directions)" if kind == "shift" else ""
        lines.append(f"  {kind} ({UNITS[kind]}){note}")
        lines.append("    " + f"{'value':>10}" + "".join(f"{r['value']:>9}" for r in result[kind]))
        for metric in ("accuracy", "loss"):
            cells = "".join(f"{r[metric]:9.4f}" for r in result[kind])
            lines.append(f"    {metric:>10}{cells}")
    folder = os.path.dirname(result["paths"]["invariance.json"])
    lines.append(f"  files: {folder}/{{invariance.json,<transform>.csv,<transform>.png}}")
    return "\n".join(lines)

"""`cnnjax eval`: a trained run's checkpoint evaluated beyond top-1, written to files and plots.

`evaluate_workdir(workdir, checkpoint)` restores the checkpoint, runs the evaluator that training
uses (cnnjax/train/evaluation.py) over every example of the evaluation split and writes, into
`DIR/eval/step_<STEP>_<SPLIT>[_ema]/`: metrics.json, confusion.csv, per_class.csv, confusion.png
and reliability.png; and TensorBoard scalars and images under
`DIR/tensorboard/eval/<SPLIT>[_ema]` at the checkpoint's step, so `tensorboard --logdir
DIR/tensorboard` shows training and evaluations side by side. `load_for_evaluation`,
`run_description` and `write_results` serve the other evaluations of `cnnjax eval` as well:
multi-crop testing (cnnjax/inspect/multicrop.py) and invariance (cnnjax/inspect/invariance.py).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnjax.data import sources
from cnnjax.data.subsets import parse_classes
from cnnjax.errors import UserError
from cnnjax.files import is_remote, staged_folder
from cnnjax.train.evaluation import summarize_evaluation
from cnnjax.train.trained_run import (
    TrainedRun,
    load_trained_run,
    read_run_config,
)
from cnnjax.train.workdir import ensure_writable, write_failure

# Used when TFDS cannot tell (e.g. a dataset prepared elsewhere without its metadata).
CLASS_NAMES = {
    "fashion_mnist": tuple(
        "T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot".split("|")
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
    "cifar10": tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
}
MOTION_NAMES = ("E", "SE", "S", "SW", "W", "NW", "N", "NE")  # cnnjax/data/tasks.py DIRECTIONS
ANNOTATE_MAX_CLASSES = 20  # beyond this, the counts in the confusion cells are unreadable
TICK_LABEL_MAX_CLASSES = 50
OUTPUT_FILES = (
    "metrics.json",
    "confusion.csv",
    "per_class.csv",
    "confusion.png",
    "reliability.png",
)


def class_names(run) -> list[str]:
    """Names of the classes of a run (a TrainedRun): from the dataset (TFDS metadata or
    the image folder), a table of the usual ones, or the class indices; a class subset
    (`data.classes`) keeps its selected names in its order."""
    cfg, num_classes = run.config.data, run.input.num_classes
    if cfg.task == "motion":
        names = MOTION_NAMES
    else:
        names = getattr(getattr(run.input, "eval_source", None), "class_names", None)
        names = names or _tfds_names(cfg) or CLASS_NAMES.get(cfg.name)
        if names and cfg.classes:
            names = tuple(names[c] for c in parse_classes(cfg.classes, len(names)))
        if names and cfg.task == "segmentation":
            names = ("background", *names)
    if not names or len(names) != num_classes:
        return [str(c) for c in range(num_classes)]
    return list(names)


def _tfds_names(cfg) -> tuple[str, ...] | None:
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or sources.default_data_dir())
        return tuple(builder.info.features["label"].names)
    except Exception:  # noqa: BLE001 (names are a nicety: fall back to the table)
        return None


def split_slug(split: str, use_ema: bool = False) -> str:
    """A file-name-safe form of a TFDS split string: "test[:10%]" -> "test_10pct" (with
    "_ema" for the weights' moving average)."""
    text = re.sub(r"[^A-Za-z0-9.-]+", "_", split.replace("%", "pct")).strip("_") or "split"
    return f"{text}_ema" if use_ema else text


def compute_sums(trained: TrainedRun, *, use_ema: bool = False) -> dict[str, np.ndarray]:
    """The evaluator's sums over every example of the run's evaluation split, on the host."""
    return trained.evaluation_sums(use_ema=use_ema)


def load_for_evaluation(
    workdir: str, checkpoint: str = "best", *, split: str | None = None, use_ema: bool = False
) -> TrainedRun:
    """Restores checkpoint `checkpoint` (best | latest | STEP) of the run in `workdir` for an
    evaluation on its evaluation split (or TFDS split `split`), after the checks that cost
    nothing: a workdir that cannot take the results, `use_ema` without a moving average."""
    config = read_run_config(workdir)
    # Before any work: a read-only or full workdir must not cost a whole evaluation.
    ensure_writable(workdir, "evaluation results")
    if use_ema and not config.train.ema_decay:  # before the (slower) restore
        raise UserError(
            "--use_ema: this run kept no moving average of its weights (train.ema_decay=0)"
        )
    if split is not None:
        config.data.eval_split = split
    return load_trained_run(workdir, checkpoint, config=config)


def run_description(trained: TrainedRun, checkpoint: str, use_ema: bool) -> dict:
    """What every evaluation result starts with: step, checkpoint, split, use_ema, model,
    dataset and task."""
    cfg = trained.config
    return {
        "step": trained.step,
        "checkpoint": checkpoint,
        "split": cfg.data.eval_split,
        "use_ema": use_ema,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "task": cfg.data.task,
    }


def write_results(folder: str, write: Callable[[str], None]) -> None:
    """`write(local_folder)` on the first process, into `folder` (local, or staged and uploaded
    to an object store); a failed write is one line."""
    if jax.process_index() != 0:  # on many hosts, the first process writes the files
        return
    try:
        with staged_folder(folder) as local:
            write(local)
    except OSError as error:
        raise write_failure("evaluation results", folder, error, "rerun `cnnjax eval`") from None


def evaluate_workdir(
    workdir: str, checkpoint: str = "best", *, split: str | None = None, use_ema: bool = False
) -> dict:
    """Evaluates checkpoint `checkpoint` (best | latest | STEP) of the run in `workdir` on its
    evaluation split (or TFDS split `split`), writes the files and returns the results: the
    `summarize_evaluation` metrics plus step, checkpoint, split, class_names and paths."""
    trained = load_for_evaluation(workdir, checkpoint, split=split, use_ema=use_ema)
    cfg = trained.config
    sums = compute_sums(trained, use_ema=use_ema)
    result = {
        **run_description(trained, checkpoint, use_ema),
        "class_names": class_names(trained),
        **summarize_evaluation(sums, with_mean_iou=cfg.data.task == "segmentation"),
    }
    slug = split_slug(cfg.data.eval_split, use_ema)
    out = os.path.join(trained.workdir, "eval", f"step_{trained.step}_{slug}")
    tensorboard = os.path.join(trained.workdir, "tensorboard", "eval", slug)
    result["paths"] = {name: os.path.join(out, name) for name in OUTPUT_FILES}
    result["paths"]["tensorboard"] = tensorboard

    def write(local_out: str) -> None:
        # On an object store (gs://) written to a local folder first, then uploaded.
        with staged_folder(tensorboard) as local_board:
            if is_remote(tensorboard):
                _remove_stale_events(tensorboard, result["step"])
            write_files(result, local_out, local_board)

    write_results(out, write)
    return result


def write_files(result: dict, out: str, tensorboard: str) -> None:
    """Writes the tables, the JSON, the plots and the TensorBoard events of `result`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    _write_confusion_csv(os.path.join(out, "confusion.csv"), result)
    _write_per_class_csv(os.path.join(out, "per_class.csv"), result)
    figures = {"confusion": plot_confusion(result), "reliability": plot_reliability(result)}
    for name, fig in figures.items():
        fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)
    _write_tensorboard(tensorboard, result, figures)


def _write_confusion_csv(path: str, result: dict) -> None:
    names = result["class_names"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, result["confusion"], strict=True))


def _write_per_class_csv(path: str, result: dict) -> None:
    fields = ("count", "correct", "accuracy", "predicted", "precision")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "name", *fields])
        for index, (name, row) in enumerate(
            zip(result["class_names"], result["per_class"], strict=True)
        ):
            writer.writerow([index, name, *("" if row[k] is None else row[k] for k in fields)])


def _remove_stale_events(logdir: str, step: int) -> None:
    for stale in epath.Path(logdir).glob(f"events.out.tfevents.*.step_{step}"):
        stale.unlink()


def _write_tensorboard(logdir: str, result: dict, figures: dict) -> None:
    """Scalars and figures at the checkpoint's step. Each checkpoint gets its own event file
    (named by its step), replaced when it is evaluated again, so curves over checkpoints build up
    without duplicate points."""
    step = result["step"]
    suffix = f".step_{step}"
    for stale in glob.glob(os.path.join(logdir, f"events.out.tfevents.*{suffix}")):
        os.remove(stale)
    from tensorboardX import SummaryWriter  # here: its import changes os.environ

    writer = SummaryWriter(logdir, filename_suffix=suffix)
    top_k = f"top_{result['top_k']}_accuracy"
    for name in ("top_1_accuracy", top_k, "loss", "ece", "mce", "mean_iou"):
        if name in result:
            writer.add_scalar(f"eval/{name}", result[name], step)
    for name, fig in figures.items():
        writer.add_image(f"eval/{name}", figure_pixels(fig), step, dataformats="HWC")
    writer.close()


def _title(result: dict) -> str:
    return f"{result['model']} on {result['dataset']} {result['split']}, step {result['step']}"


def figure_pixels(fig: Figure) -> np.ndarray:
    """`fig` rendered by Agg as RGB bytes [H, W, 3] (what tensorboardX's add_figure does, but
    without pyplot, which could change the process's backend)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_confusion(result: dict) -> Figure:
    """Row-normalized confusion heat map (counts in the cells for up to 20 classes)."""
    counts = np.asarray(result["confusion"], np.int64)
    names, num_classes = result["class_names"], len(counts)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = float(np.clip(0.6 * num_classes + 2.5, 5, 20))
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if num_classes <= ANNOTATE_MAX_CLASSES:
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if rates[row, col] > 0.5 else "black"
            ax.text(col, row, f"{count}", ha="center", va="center", color=color, fontsize=8)
    if num_classes <= TICK_LABEL_MAX_CLASSES:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{_title(result)}\ntop-1 accuracy {result['top_1_accuracy']:.4f}")
    fig.tight_layout()
    return fig


def plot_reliability(result: dict) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, and the number of
    examples per bin below (log scale: most predictions sit in the top bin)."""
    bins = result["calibration"]
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    centers = [b["lower"] + width / 2 for b in filled]
    fig = Figure(figsize=(6, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    accuracy = [b["accuracy"] for b in filled]
    top.bar(centers, accuracy, width=width, edgecolor="black", label="accuracy")
    gap = [b["confidence"] - b["accuracy"] for b in filled]  # > 0: overconfident
    top.bar(
        centers,
        gap,
        bottom=accuracy,
        width=width,
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    top.set_title(
        f"{_title(result)}\nECE {result['ece']:.4f}, MCE {result['mce']:.4f} ({len(bins)} bins)"
    )
    bottom.bar(centers, [b["count"] for b in filled], width=width, color="tab:gray")
    bottom.set_yscale("log")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (largest softmax probability)")
    bottom.set_ylabel("count")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def worst_classes(result: dict, n: int = 3) -> list[tuple[str, float]]:
    """The `n` classes with the lowest accuracy (classes with no example left out)."""
    scored = [
        (accuracy, name)
        for name, accuracy in zip(result["class_names"], result["per_class_accuracy"], strict=True)
        if accuracy is not None
    ]
    return [(name, accuracy) for accuracy, name in sorted(scored)[:n]]


def format_evaluation(result: dict) -> str:
    """A few lines for the terminal: the headline numbers, the worst classes and the paths."""
    unit = "pixels" if result["task"] == "segmentation" else "examples"
    top_k = result["top_k"]
    iou = f"   mean IoU {result['mean_iou']:.4f}" if "mean_iou" in result else ""
    worst = ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in worst_classes(result))
    paths = result["paths"]
    folder = os.path.dirname(paths["metrics.json"])
    ema = " (EMA weights)" if result["use_ema"] else ""
    return (
        f"step {result['step']} (--checkpoint={result['checkpoint']}){ema} of {result['model']} "
        f"on {result['dataset']} {result['split']}: {result['count']:,} {unit}\n"
        f"  top-1 accuracy {result['top_1_accuracy']:.4f}   "
        f"top-{top_k} accuracy {result[f'top_{top_k}_accuracy']:.4f}   "
        f"loss {result['loss']:.4f}   ECE {result['ece']:.4f}{iou}\n"
        f"  worst classes: {worst}\n"
        f"  metrics:     {paths['metrics.json']}\n"
        f"  tables:      {folder}/{{confusion,per_class}}.csv\n"
        f"  plots:       {folder}/{{confusion,reliability}}.png\n"
        f"  tensorboard: {paths['tensorboard']}   "
        f"(tensorboard --logdir {os.path.dirname(os.path.dirname(paths['tensorboard']))})"
    )

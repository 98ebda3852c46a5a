"""`cnnjax visualize`: what a trained run learned, drawn as PNGs and TensorBoard images.

    cnnjax visualize --workdir=DIR [--checkpoint=best|latest|STEP] [--layers=a,b] [--images=0,1]

writes into DIR/visualize/ (DIR/visualize/step_N/ for a checkpoint other than "best"):

- filters.png, filters_init.png: the first convolution's filters, trained and at initialization
  (the run's seed); one input channel on a diverging map around zero, three as RGB min-max;
- feature_maps_<layer>.png: the first 16 channels of a layer's output on the first chosen test
  image (by default up to 4 conv-level activation layers, spread over the depth);
- saliency.png: the chosen test images with predicted and true class, and beneath them the
  saliency of the predicted class (for segmentation: of the center pixel's predicted class);
- activation_stats.png / .json: per activation layer (cnnjax/inspect/activations.py), over up to
  256 test images, a histogram and the fractions of zero outputs, dead and saturated units;

and the PNGs as TensorBoard images under DIR/tensorboard/visualize at the checkpoint's step.
1-D inputs [L, C] are drawn as L x C pictures, 3-D clips [T, H, W, C] by their middle frame.
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread

from cnnjax.errors import UserError
from cnnjax.files import staged_folder
from cnnjax.inspect import activations as act
from cnnjax.inspect.evaluation_report import class_names
from cnnjax.train.trained_run import TrainedRun, load_trained_run, read_run_config
from cnnjax.train.workdir import ensure_writable

STATS_IMAGES = 256
# Activation values held for the statistics (float64 copies: about 400 MB): fewer images for
# big nets at big inputs, where 256 images of every layer would not fit in memory.
STATS_VALUES = 50_000_000
MAX_FEATURE_LAYERS, MAX_CHANNELS, MAX_FILTERS, MAX_HISTOGRAMS = 4, 16, 64, 16


def visualize_workdir(
    workdir: str,
    checkpoint: str = "best",
    *,
    layers: list[str] | str | None = None,
    num_images: int = 8,
    image_indices: list[int] | str | None = None,
) -> dict[str, str]:
    """Draws filters, feature maps, saliency and activation statistics of checkpoint
    `checkpoint` (best | latest | STEP) of the run in `workdir`; returns {name: file path}.

    `layers`: layer names (activation layers, or any module path such as "ConvBlock_0/Conv_0")
    for the feature maps; `image_indices`: test-split indices for the saliency figure (default
    the first `num_images`). Both also take comma-separated strings, as on the command line.
    """
    read_run_config(workdir)  # one line when it is not a run, before the writability check
    ensure_writable(workdir, "figures")
    trained = load_trained_run(workdir, str(checkpoint))
    out_dir = os.path.join(trained.workdir, "visualize")
    if checkpoint != "best":  # other checkpoints side by side, not over the best one's figures
        out_dir = os.path.join(out_dir, f"step_{trained.step}")
    board = os.path.join(trained.workdir, "tensorboard", "visualize")
    # On an object store (gs://) drawn into a local folder first, then uploaded.
    with staged_folder(out_dir) as local_dir, staged_folder(board) as local_board:
        paths = _draw(trained, local_dir, local_board, layers, num_images, image_indices)
    paths = {name: path.replace(local_dir, out_dir, 1) for name, path in paths.items()}
    paths["tensorboard"] = board
    return paths


def _draw(trained, out_dir, board, layers, num_images, image_indices) -> dict[str, str]:
    """Writes every figure into `out_dir` and their images as TensorBoard events into `board`;
    returns {name: file path}."""
    run, model = trained, trained.model
    variables = {"params": trained.state.params}
    if jax.tree.leaves(trained.state.batch_stats):
        variables["batch_stats"] = trained.state.batch_stats
    blank = np.zeros((1, *run.input_shape), np.float32)
    calls = act.trace_calls(model, variables, blank)
    act_layers = act.activation_layers(calls, run.config.model.activation)
    shapes = act.activation_shapes(model, variables, blank, act_layers)
    indices = _parse_list(image_indices, int) or list(range(num_images))
    images, labels, num_stats = _examples(run, shapes, indices)
    batch = np.asarray(run.input.normalization(images))  # as the steps normalize them
    # Pictures in [0, 1]: the uint8 images the input read, before normalization.
    chosen, pictures = batch[num_stats:], images[num_stats:] / 255.0
    title = f"{run.config.model.name} on {run.config.data.name}, step {trained.step}"
    map_layers, map_paths = _feature_layers(_parse_list(layers, str), act_layers, calls, shapes)
    # One forward pass for all: the statistics' images, then the chosen ones (maps, logits).
    wanted = [la.path for la in act_layers] + map_paths + [""]  # "": the model's output
    outputs = act.capture(model, variables, batch, filter=act.paths_filter(wanted))
    values = act.post_activations(outputs, act_layers)
    stats = act.activation_statistics(
        {name: v[:num_stats] for name, v in values.items()}, activation=run.config.model.activation
    )
    paths = _write_filters(trained, calls, out_dir, title)
    paths.update(_write_stats(stats, trained, num_stats, out_dir, title) if stats else {})
    maps = {la.name: values[la.name] for la in map_layers} | {p: outputs[p] for p in map_paths}
    paths.update(_write_feature_maps(maps, num_stats, pictures[0], out_dir))
    logits = np.asarray(outputs[""][num_stats:])
    names = class_names(run)
    paths["saliency"] = _write_saliency(
        model, variables, chosen, logits, pictures, labels[num_stats:], names, out_dir, title
    )
    _write_tensorboard(trained, {k: v for k, v in paths.items() if v.endswith(".png")}, board)
    return paths


def format_visualization(paths: dict[str, str]) -> str:
    """The files `visualize_workdir` wrote, one "name  path" per line."""
    width = max(map(len, paths), default=0)
    return "\n".join(f"{name:<{width}}  {path}" for name, path in paths.items())


def _parse_list(value, kind) -> list:
    items = [i for i in value.split(",") if i.strip()] if isinstance(value, str) else value or []
    try:
        return [kind(item.strip()) if isinstance(item, str) else kind(item) for item in items]
    except ValueError:
        raise UserError(f"cannot read {value!r} as a comma-separated list") from None


def _examples(run, shapes: dict, indices: list[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Test images (uint8, as the input reads them) and labels: first those for the
    statistics (as many as STATS_VALUES allows, at most STATS_IMAGES), then those at
    `indices`; and how many the former are."""
    per_image = sum(math.prod(shape) for shape in shapes.values())
    num_stats = int(np.clip(STATS_VALUES // max(per_image, 1), 8, STATS_IMAGES))
    images, labels = [], []
    for batch in run.input.eval_batches():
        real = int(batch["mask"].sum())
        images.append(np.asarray(batch["image"][:real]))
        labels.append(np.asarray(batch["label"][:real]))
        if sum(map(len, labels)) > max(num_stats, *indices):
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    if max(indices) >= len(images) or min(indices) < 0:
        raise UserError(f"--images: the test split has {len(images)} examples")
    keep = [*range(min(num_stats, len(images))), *indices]
    return images[keep], labels[keep], len(keep) - len(indices)


def _spread(items: list, limit: int) -> list:
    """At most `limit` of `items`, evenly spaced from the first to the last."""
    picks = np.linspace(0, len(items) - 1, min(limit, len(items))).round().astype(int)
    return [items[i] for i in picks]


def _picture(example: np.ndarray) -> np.ndarray:
    """One example as a 2-D (gray) or RGB picture: [H, W, C] -> [H, W] or [H, W, 3]; [L, C]
    as it is; [T, H, W, C] by its middle frame."""
    if example.ndim == 4:
        return _picture(example[example.shape[0] // 2])
    if example.ndim == 3:
        return example if example.shape[-1] == 3 else example.mean(axis=-1)
    return example


def _filter_picture(kernel: np.ndarray) -> np.ndarray:
    """One filter as a picture: 3-D filters [t, kh, kw, C] as their t slices side by side."""
    if kernel.ndim == 4:
        kernel = np.concatenate(list(kernel), axis=1)  # [kh, t * kw, C]
    return _picture(kernel)


def _grid(count: int, max_cols: int, width: float, height: float):
    """A figure with `count` panels in balanced rows of at most `max_cols`, axes hidden."""
    nrows = -(-count // max_cols)
    ncols = -(-count // nrows)
    size = (width * ncols, height * nrows + 0.8)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_filters(filters: np.ndarray, path: str, title: str, notes: list[str] = ()) -> str:
    """Filters [N, ..., C_in] as a grid: gray-channel filters on a diverging map symmetric
    around zero (each to its own max |w|), RGB filters min-max scaled; `notes[i]` goes under
    filter i's number."""
    pictures = [_filter_picture(f) for f in filters[:MAX_FILTERS]]
    fig, axes = _grid(len(pictures), 8, 1.4, 1.5)
    for index, (ax, picture) in enumerate(zip(axes.flat, pictures, strict=False)):
        if picture.ndim == 3:
            low, high = picture.min(), picture.max()
            ax.imshow((picture - low) / max(high - low, 1e-12), interpolation="nearest")
        else:
            limit = max(float(np.abs(picture).max()), 1e-12)
            ax.imshow(picture, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        note = f"\n{notes[index]}" if index < len(notes) else ""
        ax.set_title(f"#{index}{note}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _write_filters(trained: TrainedRun, calls, out_dir: str, title: str) -> dict[str, str]:
    conv = act.first_conv_path(calls)
    if conv is None:
        print("visualize: the model has no convolution: no filters.png")
        return {}
    run = trained
    kernel = act.first_layer_filters(trained.state.params, conv)
    start = act.first_layer_filters(trained.initial_params, conv)  # where training started
    rgb = kernel.shape[-1] == 3 and kernel.ndim == 4
    scale = "RGB, min-max scaled" if rgb else "red > 0 > blue, scaled to max |w|"
    # How far training moved each filter from where it started.
    notes = [
        f"r={np.corrcoef(a.ravel(), b.ravel())[0, 1]:.2f}"
        for a, b in zip(kernel, start, strict=True)
    ]
    trained_title = f"{conv} filters, {title}\n({scale}; r: correlation with the initial filter)"
    init_title = f"{conv} filters at initialization (seed {run.config.seed})\n({scale})"
    return {
        "filters": draw_filters(kernel, os.path.join(out_dir, "filters.png"), trained_title, notes),
        "filters_init": draw_filters(start, os.path.join(out_dir, "filters_init.png"), init_title),
    }


def draw_activation_stats(stats: dict[str, dict], path: str, title: str) -> str:
    """Histograms of each layer's nonzero outputs, then one bar chart across layers of the
    fractions of zero outputs, dead and saturated units and the mean |correlation|."""
    names = list(stats)
    shown = _spread(names, MAX_HISTOGRAMS)
    ncols = min(len(shown), 4)
    nrows = -(-len(shown) // ncols) + 1
    fig = Figure(figsize=(3.4 * ncols, 2.4 * nrows + 0.6), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    for index, name in enumerate(shown):
        ax, layer = fig.add_subplot(grid[index // ncols, index % ncols]), stats[name]
        ax.stairs(layer["histogram"]["counts"], layer["histogram"]["edges"], fill=True)
        ax.set_title(
            f"{name} {tuple(layer['shape'])}\nmean {layer['mean']:.2f}, std {layer['std']:.2f}, "
            f"zeros {layer['zero_fraction']:.0%} (not drawn)",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    series = [("zero outputs", "zero_fraction"), ("dead units", "dead_fraction")]
    if stats[names[0]]["saturated_fraction"] is not None:
        series.append(("saturated", "saturated_fraction"))
    series.append(("mean |corr| between units", "mean_abs_correlation"))
    bars = fig.add_subplot(grid[-1, :])
    width, positions = 0.8 / len(series), np.arange(len(names))
    for offset, (label, key) in enumerate(series):
        heights = [stats[name][key] or 0.0 for name in names]
        drawn = bars.bar(positions + offset * width, heights, width, label=label)
        bars.bar_label(drawn, fmt="%.2f", fontsize=6)
    bars.set_xticks(positions + 0.4 - width / 2, names, fontsize=7, rotation=20, ha="right")
    bars.set_ylim(0, 1.1)
    bars.set_ylabel("fraction")
    bars.legend(fontsize=7, ncols=len(series), loc="upper left")
    fig.suptitle(f"activations per layer: {title}", fontsize=10)
    return _save(fig, path)


def _write_stats(stats, trained: TrainedRun, count: int, out_dir: str, title: str) -> dict:
    json_path = os.path.join(out_dir, "activation_stats.json")
    with open(json_path, "w") as f:
        activation = trained.config.model.activation
        record = dict(step=trained.step, activation=activation, num_images=count, layers=stats)
        json.dump(record, f, indent=1)
    title = f"{title}, {count} test images"
    png = draw_activation_stats(stats, os.path.join(out_dir, "activation_stats.png"), title)
    return {"activation_stats": png, "activation_stats_json": json_path}


def draw_feature_maps(picture: np.ndarray, maps: np.ndarray, path: str, title: str) -> str:
    """The input picture, then the first channels of one example's layer output: [H, W, C] one
    panel per channel, [L, C] one panel of channels x positions, [T, H, W, C] its middle frame."""
    if maps.ndim == 4:
        maps = maps[maps.shape[0] // 2]
    if maps.ndim == 2:
        panels = [(f"channels 0-{min(maps.shape[1], MAX_CHANNELS) - 1} x positions",
                   maps[:, :MAX_CHANNELS].T)]  # fmt: skip
    else:
        panels = [(f"channel {c}", maps[..., c]) for c in range(min(maps.shape[-1], MAX_CHANNELS))]
    panels = [("input", _picture(picture)), *panels]
    fig, axes = _grid(len(panels), 9, 1.6, 1.8)
    for index, (ax, (name, panel)) in enumerate(zip(axes.flat, panels, strict=False)):
        cmap = "gray" if index == 0 else "viridis"
        ax.imshow(
            panel, cmap=cmap, interpolation="nearest", aspect="auto" if maps.ndim == 2 else None
        )
        ax.set_title(name if index == 0 else f"{name}\nmax {float(panel.max()):.2f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _feature_layers(requested, act_layers, calls, shapes) -> tuple[list, list]:
    """The activation layers and the other module paths to draw feature maps of."""
    by_name = {la.name: la for la in act_layers}
    if not requested:
        spatial = [la for la in act_layers if len(shapes[la.name]) >= 3]
        return _spread(spatial, MAX_FEATURE_LAYERS), []
    known = {c.path for c in calls if c.path}
    unknown = [n for n in requested if n not in by_name and n not in known]
    if unknown:
        raise UserError(
            f"--layers: unknown layer {', '.join(unknown)}; activation layers are "
            f"{', '.join(by_name)}, or give a module path such as {next(iter(sorted(known)))}"
        )
    modules = [n for n in requested if n not in by_name]
    return [by_name[n] for n in requested if n in by_name], modules


def _write_feature_maps(
    outputs: dict, index: int, picture: np.ndarray, out_dir: str
) -> dict[str, str]:
    """Feature maps of example `index` of each batched output in `outputs` ({name: output})."""
    paths = {}
    for name, output in outputs.items():
        output = np.asarray(output[index]) if isinstance(output, jax.Array | np.ndarray) else None
        if output is None or output.ndim < 2:
            print(f"visualize: {name} has no spatial maps (output {getattr(output, 'shape', '?')})")
            continue
        key = "feature_maps_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        path = os.path.join(out_dir, key + ".png")
        paths[key] = draw_feature_maps(picture, output, path, f"{name} {output.shape}")
    return paths


def _saliency_picture(values: np.ndarray, width: int) -> np.ndarray:
    """One example's saliency as a picture: [L] a stripe per position, [T, H, W] max over T."""
    if values.ndim == 1:
        return np.repeat(values[:, None], width, axis=1)
    return values.max(axis=0) if values.ndim == 3 else values


def _write_saliency(
    model, variables, images, logits, pictures, labels, names, out_dir, title
) -> str:
    segmentation = logits.ndim > 2
    if segmentation:  # the center pixel's logits and label
        logits = logits[(slice(None), *(s // 2 for s in logits.shape[1:-1]))]
        labels = labels[(slice(None), *(s // 2 for s in labels.shape[1:]))]
    probabilities = np.asarray(jax.nn.softmax(logits))
    predicted = probabilities.argmax(axis=1)
    maps = np.asarray(act.saliency(model, variables, images, predicted))
    fig, axes = _grid(2 * len(images), len(images), 1.9, 1.8)
    for b in range(len(images)):
        picture = _picture(pictures[b])
        axes[0, b].imshow(picture, cmap=None if picture.ndim == 3 else "gray")
        guess = f"pred {names[predicted[b]]} {probabilities[b, predicted[b]]:.0%}"
        color = "green" if predicted[b] == labels[b] else "red"
        axes[0, b].set_title(f"{guess}\ntrue {names[labels[b]]}", fontsize=7, color=color)
        axes[1, b].imshow(_saliency_picture(maps[b], picture.shape[1]), cmap="hot")
        if segmentation:  # mark the pixel whose score is explained
            axes[0, b].plot(picture.shape[1] // 2, picture.shape[0] // 2, "c+", markersize=10)
    what = "the center pixel's predicted class" if segmentation else "the predicted class"
    fig.suptitle(
        f"saliency max_c |d logit / d x| of {what} (Simonyan et al. 2014)\n{title}", fontsize=9
    )
    return _save(fig, os.path.join(out_dir, "saliency.png"))


def _write_tensorboard(trained: TrainedRun, pngs: dict[str, str], board: str) -> None:
    from tensorboardX import SummaryWriter  # here: its import changes os.environ

    writer = SummaryWriter(board)
    try:
        for name, path in pngs.items():
            image = imread(path)[..., :3]  # RGBA floats in [0, 1] -> RGB
            writer.add_image(f"visualize/{name}", image, trained.step, dataformats="HWC")
    finally:
        writer.close()

"""`cnnjax visualize`: what a trained run learned, drawn as PNGs and TensorBoard images.

    cnnjax visualize --workdir=DIR [--checkpoint=best|latest|STEP] [--layers=a,b] [--images=0,1]
                     [--units=0,1,2] [--top_images=9]

writes into DIR/visualize/ (DIR/visualize/step_N/ for a checkpoint other than "best"):

- filters.png, filters_init.png: the first convolution's filters, trained and at initialization
  (the run's seed); one input channel on a diverging map around zero, three as RGB min-max;
- feature_maps_<layer>.png: the first 16 channels of a layer's output on the first chosen test
  image (by default up to 4 conv-level activation layers, spread over the depth);
- saliency.png: the chosen test images (`--images`, default the first 8) with predicted and true
  class, and beneath them four attribution maps of the predicted class (for segmentation: of
  the center pixel's; cnnjax/inspect/attribution.py): the vanilla gradient max_c |d logit / dx|,
  gradient x input, SmoothGrad (25 noisy copies at sigma 0.15, noise from the run's seed) and
  occlusion (a patch of about 1/7 of the image at half-patch steps, filled with the training
  mean, 0 in standardized inputs; per pixel the mean drop of the class's probability over the
  patches covering it);
- top_activations_<layer>.png / top_activations.json: per unit (`--units`, default the first
  8), the `--top_images` test images (of the first 2,000) that drive it most, with the unit's
  value; for conv units the maximum over positions, and the box of input pixels the unit sees
  there (cnnjax/inspect/top_activations.py). By default the deepest conv activation layer and
  the hidden dense layers (their raw outputs where no normalization marks their activation, as
  in AlexNet and VGG); `--layers` chooses (the JSON holds every unit's indices and values);
- activation_stats.png / .json: per activation layer (cnnjax/inspect/activations.py), over up to
  256 test images, a histogram and the fractions of zero outputs, dead and saturated units;

and the PNGs as TensorBoard images under DIR/tensorboard/visualize at the checkpoint's step.
1-D inputs [L, C] are drawn as L x C pictures, 3-D clips [T, H, W, C] by their middle frame
(in the top activations: the middle frame of the unit's receptive field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import numpy as np
from matplotlib.image import imread

from cnnjax.errors import UserError
from cnnjax.files import staged_folder
from cnnjax.inspect import activations as act
from cnnjax.inspect import attribution
from cnnjax.inspect import visualize_figures as figures
from cnnjax.inspect.evaluation_report import class_names
from cnnjax.inspect.top_activations import default_layers, top_activations
from cnnjax.train.trained_run import TrainedRun, load_trained_run, read_run_config
from cnnjax.train.workdir import ensure_writable

STATS_IMAGES = 256
# Activation values held for the statistics (float64 copies: about 400 MB): fewer images for
# big nets at big inputs, where 256 images of every layer would not fit in memory.
STATS_VALUES = 50_000_000
MAX_FEATURE_LAYERS = 4
TOP_UNITS = 8  # units drawn per layer by default (rows of top_activations_<layer>.png)
# Test images scanned for the top activations: all of a small test split, and on LeNet-5's
# 10,000 a few seconds on 2 CPU cores.
TOP_SCAN_IMAGES = 2000


@dataclasses.dataclass(frozen=True)
class _Choices:
    """What to draw, parsed from `visualize_workdir`'s arguments."""

    layers: list[str]
    image_indices: list[int]
    units: list[int]
    top_images: int
    scan_images: int


def visualize_workdir(
    workdir: str,
    checkpoint: str = "best",
    *,
    layers: list[str] | str | None = None,
    num_images: int = 8,
    image_indices: list[int] | str | None = None,
    units: list[int] | str | None = None,
    top_images: int = 9,
    scan_images: int = TOP_SCAN_IMAGES,
) -> dict[str, str]:
    """Draws filters, feature maps, attribution maps, top-activating images and activation
    statistics of checkpoint `checkpoint` (best | latest | STEP) of the run in `workdir`;
    returns {name: file path}.

    `layers`: layer names (activation layers, or any module path such as "ConvBlock_0/Conv_0")
    for the feature maps and the top activations; `image_indices`: test-split indices for the
    saliency figure (default the first `num_images`); `units`: the units drawn per layer in the
    top activations (default the first 8), each with its `top_images` best of the first
    `scan_images` test images. Lists also take comma-separated strings, as on the command line.
    """
    choices = _Choices(
        _parse_list(layers, str),
        _parse_list(image_indices, int) or list(range(num_images)),
        _parse_list(units, int) or list(range(TOP_UNITS)),
        int(top_images),
        int(scan_images),
    )
    if choices.top_images < 1 or choices.scan_images < 1 or min(choices.units) < 0:
        raise UserError("--top_images and the images scanned must be >= 1, --units >= 0")
    read_run_config(workdir)  # one line when it is not a run, before the writability check
    ensure_writable(workdir, "figures")
    trained = load_trained_run(workdir, str(checkpoint))
    out_dir = os.path.join(trained.workdir, "visualize")
    if checkpoint != "best":  # other checkpoints side by side, not over the best one's figures
        out_dir = os.path.join(out_dir, f"step_{trained.step}")
    board = os.path.join(trained.workdir, "tensorboard", "visualize")
    # On an object store (gs://) drawn into a local folder first, then uploaded.
    with staged_folder(out_dir) as local_dir, staged_folder(board) as local_board:
        paths = _draw(trained, local_dir, local_board, choices)
    paths = {name: path.replace(local_dir, out_dir, 1) for name, path in paths.items()}
    paths["tensorboard"] = board
    return paths


def _draw(trained: TrainedRun, out_dir: str, board: str, choices: _Choices) -> dict[str, str]:
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
    images, labels, num_stats = _examples(run, shapes, choices.image_indices)
    batch = np.asarray(run.input.normalization(images))  # as the steps normalize them
    # Pictures in [0, 1]: the uint8 images the input read, before normalization.
    chosen, pictures = batch[num_stats:], images[num_stats:] / 255.0
    title = f"{run.config.model.name} on {run.config.data.name}, step {trained.step}"
    map_layers, map_paths = _feature_layers(choices.layers, act_layers, calls, shapes)
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
    examples = (chosen, logits, pictures, labels[num_stats:])
    paths["saliency"] = _write_saliency(trained, variables, examples, out_dir, title)
    chosen_layers = {la.name: la for la in map_layers}  # module paths stay strings
    top_layers = [chosen_layers.get(name, name) for name in choices.layers]
    top_layers = top_layers or default_layers(act_layers, calls, shapes)
    paths.update(_write_top_activations(trained, variables, top_layers, choices, out_dir, title))
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
        "filters": figures.draw_filters(
            kernel, os.path.join(out_dir, "filters.png"), trained_title, notes
        ),
        "filters_init": figures.draw_filters(
            start, os.path.join(out_dir, "filters_init.png"), init_title
        ),
    }


def _write_stats(stats, trained: TrainedRun, count: int, out_dir: str, title: str) -> dict:
    json_path = os.path.join(out_dir, "activation_stats.json")
    with open(json_path, "w") as f:
        activation = trained.config.model.activation
        record = dict(step=trained.step, activation=activation, num_images=count, layers=stats)
        json.dump(record, f, indent=1)
    title = f"{title}, {count} test images"
    png = figures.draw_activation_stats(stats, os.path.join(out_dir, "activation_stats.png"), title)
    return {"activation_stats": png, "activation_stats_json": json_path}


def _feature_layers(requested, act_layers, calls, shapes) -> tuple[list, list]:
    """The activation layers and the other module paths to draw feature maps of."""
    by_name = {la.name: la for la in act_layers}
    if not requested:
        spatial = [la for la in act_layers if len(shapes[la.name]) >= 3]
        return figures.spread(spatial, MAX_FEATURE_LAYERS), []
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
        key = "feature_maps_" + _file_name(name)
        path = os.path.join(out_dir, key + ".png")
        paths[key] = figures.draw_feature_maps(picture, output, path, f"{name} {output.shape}")
    return paths


def _eval_images(run):
    """The test split's uint8 images [b, ...], batch by batch, without the padding rows."""
    for batch in run.input.eval_batches():
        yield np.asarray(batch["image"][: int(batch["mask"].sum())])


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _occlusion_fill(run: TrainedRun) -> np.ndarray | float:
    """The training split's mean pixel as a model input (per channel): 0 for standardized
    inputs, the mean itself in [0, 1] without standardization. A patch of the mean carries no
    information the model was not trained with (its zero padding is the same value), where a
    black patch on Fashion-MNIST would be its background."""
    mean = getattr(run.input, "mean", None)
    if mean is None:  # streaming inputs standardize with the ImageNet mean: it becomes 0
        return 0.0
    return np.asarray(run.input.normalization(np.asarray(mean, np.float64) * 255.0))


def _write_saliency(run: TrainedRun, variables, examples, out_dir: str, title: str) -> str:
    """saliency.png: the examples (inputs, logits, pictures, labels) and four attribution maps
    of each one's predicted class."""
    images, logits, pictures, labels = examples
    model, segmentation = run.model, logits.ndim > 2
    if segmentation:  # the center pixel's logits and label
        logits = logits[(slice(None), *(s // 2 for s in logits.shape[1:-1]))]
        labels = labels[(slice(None), *(s // 2 for s in labels.shape[1:]))]
    probabilities = np.asarray(jax.nn.softmax(logits))
    predicted = probabilities.argmax(axis=1)
    args = (model, variables, images, predicted)
    key = jax.random.key(run.config.seed)  # the run's seed: the same noise at every call
    patch, stride = attribution.default_patch(images.shape[1:-1])
    smooth = (
        f"SmoothGrad (n={attribution.SMOOTHGRAD_SAMPLES}, sigma={attribution.SMOOTHGRAD_SIGMA})"
    )
    rows = [
        ("gradient max_c |d logit / dx|", attribution.saliency(*args), False),
        ("gradient x input", attribution.gradient_times_input(*args), True),
        (smooth, attribution.smoothgrad(*args, key), False),
        (
            f"occlusion {'x'.join(map(str, patch))} / {stride[-1]}: drop of p(class)",
            attribution.occlusion(*args, fill=_occlusion_fill(run)),
            True,
        ),
    ]
    names = class_names(run)
    captions = [
        (
            f"pred {names[p]} {probabilities[b, p]:.0%}\ntrue {names[labels[b]]}",
            "green" if p == labels[b] else "red",
        )
        for b, p in enumerate(predicted)
    ]
    what = "the center pixel's predicted class" if segmentation else "the predicted class"
    heading = f"attributions of {what} (red: raises its score)\n{title}"
    path = os.path.join(out_dir, "saliency.png")
    return figures.draw_attributions(
        pictures, captions, rows, path, heading, mark_center=segmentation
    )


def _pictures_at(run: TrainedRun, indices: set[int]) -> dict[int, np.ndarray]:
    """{index: test image at `indices` in [0, 1]}, read again (the scan keeps no images)."""
    pictures, start = {}, 0
    for images in _eval_images(run):
        for index in sorted(i for i in indices if start <= i < start + len(images)):
            pictures[index] = images[index - start] / 255.0
        start += len(images)
        if start > max(indices):
            break
    return pictures


def _write_top_activations(run, variables, layers, choices: _Choices, out_dir, title) -> dict:
    """top_activations.json (every unit) and top_activations_<layer>.png (the chosen units)."""
    if not layers:
        print("visualize: the model has no hidden layers: no top activations")
        return {}
    normalized = (run.input.normalization(images) for images in _eval_images(run))
    tops = top_activations(
        run.model,
        variables,
        normalized,
        layers,
        k=choices.top_images,
        max_examples=choices.scan_images,
    )
    json_path = os.path.join(out_dir, "top_activations.json")
    with open(json_path, "w") as f:
        layers_json = {name: top.to_json() for name, top in tops.items()}
        json.dump(dict(step=run.step, k=choices.top_images, layers=layers_json), f)
    paths = {"top_activations_json": json_path}
    shown = {n: [u for u in choices.units if u < len(t.indices)] for n, t in tops.items()}
    wanted = {int(i) for n, t in tops.items() for i in t.indices[shown[n]].ravel()}
    pictures = _pictures_at(run, wanted) if wanted else {}
    for name, top in tops.items():
        if not shown[name]:
            print(f"visualize: {name} has {len(top.indices)} units: none of --units to draw")
            continue
        what = f"top {top.indices.shape[1]} of {top.num_examples} test images per unit"
        if top.positions is not None:
            what += ", max over positions" + (
                ", box: what it sees" if top.boxes is not None else ""
            )
        heading = f"{name}: {what}\n{title}"
        key = "top_activations_" + _file_name(name)
        path = os.path.join(out_dir, key + ".png")
        paths[key] = figures.draw_top_activations(top, pictures, shown[name], path, heading)
    return paths


def _write_tensorboard(trained: TrainedRun, pngs: dict[str, str], board: str) -> None:
    from tensorboardX import SummaryWriter  # here: its import changes os.environ

    writer = SummaryWriter(board)
    try:
        for name, path in pngs.items():
            image = imread(path)[..., :3]  # RGBA floats in [0, 1] -> RGB
            writer.add_image(f"visualize/{name}", image, trained.step, dataformats="HWC")
    finally:
        writer.close()

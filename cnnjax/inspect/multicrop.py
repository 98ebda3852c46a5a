"""`cnnjax eval --crops=10`: multi-crop testing, the softmax averaged over views of each image.

AlexNet's protocol (Krizhevsky et al. 2012): the four corner crops and the centre crop, each
also mirrored, 10 views; `--crops=5` without the mirrors, `--crops=2` the centre crop and its
mirror, 1 the evaluation of `cnnjax eval`. The views are cut where the run's training crops
could fall:

* in-memory datasets (Fashion-MNIST, CIFAR...): crops of the model's input size from the image
  zero-padded by the run's `data.augment.random_crop_padding` P (or `crop_padding`), i.e. the
  extreme and central positions of its random crops; the centre view is the image itself;
* streaming ImageNet-style datasets: the shorter side resized to the run's evaluation size
  (data.eval_resize), then the five crops of data.image_size (torchvision's FiveCrop/TenCrop);
  the centre view is the usual evaluation crop.

The views go through the run's own jitted model and on-device normalization
(`TrainedRun.multi_view_sums`). Results, with the 1-crop numbers side by side, are written to
`DIR/eval/step_<STEP>_<SPLIT>[_ema]_<N>crop/metrics.json`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import os
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image

# eval_transform's own reduced JPEG decode and filter: the centre view is its crop to the byte.
from cnnjax.data.image_decoding import eval_resized
from cnnjax.data.inputs import StreamingInput
from cnnjax.errors import UserError
from cnnjax.inspect.evaluation_report import (
    load_for_evaluation,
    run_description,
    split_slug,
    write_results,
)
from cnnjax.train.evaluation import map_images, summarize_evaluation
from cnnjax.train.trained_run import TrainedRun

CROPS = (1, 2, 5, 10)
# Views by name, in the order they are stacked: the centre first, so 1 and 2 crops are prefixes.
VIEW_NAMES = {
    1: ("centre",),
    2: ("centre", "centre mirrored"),
    5: ("centre", "top left", "top right", "bottom left", "bottom right"),
}
VIEW_NAMES[10] = VIEW_NAMES[5] + tuple(f"{name} mirrored" for name in VIEW_NAMES[5])
HEADLINE = ("count", "top_k", "loss", "top_1_accuracy", "ece", "mce")


def check_crops(crops: int) -> None:
    """One line unless `crops` is 1, 2, 5 or 10."""
    if crops not in CROPS:
        raise UserError(f"--crops={crops}: choose 1, 2, 5 or 10")


def crop_corners(height: int, width: int, crop_height: int, crop_width: int) -> list:
    """(top, left) of the centre and the four corner crops of crop_height x crop_width in an
    image of height x width, in VIEW_NAMES[5]'s order; the centre rounded as torchvision's
    CenterCrop."""
    bottom, right = height - crop_height, width - crop_width
    centre = (int(round(bottom / 2)), int(round(right / 2)))
    return [centre, (0, 0), (0, right), (bottom, 0), (bottom, right)]


def cut_views(images: np.ndarray, crop_height: int, crop_width: int, crops: int) -> np.ndarray:
    """The `crops` views of `images` [..., H, W, C] (crop_height x crop_width crops of
    `crop_corners`, mirrored left to right for the second half of 2 and 10): [..., V, h, w, C]
    in VIEW_NAMES[crops]'s order."""
    check_crops(crops)
    height, width = images.shape[-3:-1]
    corners = crop_corners(height, width, crop_height, crop_width)[: 1 if crops <= 2 else 5]
    views = [images[..., y : y + crop_height, x : x + crop_width, :] for y, x in corners]
    if crops in (2, 10):
        views += [view[..., ::-1, :] for view in views]
    return np.stack(views, axis=-4)


def padded_views(images: np.ndarray, padding: int, crops: int) -> np.ndarray:
    """`crops` views [B, V, H, W, C] of `images` [B, H, W, C] zero-padded by `padding`: the
    centre view is the image itself, the corners its shifts by `padding` both ways."""
    pad = [(0, 0)] * (images.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    height, width = images.shape[-3:-1]
    return cut_views(np.pad(images, pad), height, width, crops)


def encoded_views(
    data: bytes,
    crops: int,
    *,
    size: int = 224,
    resize: int = 256,
    draft: bool = True,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Encoded image -> the `crops` views uint8 [V, size, size, 3] of its resized version: the
    shorter side to `resize` exactly as `image_decoding.eval_transform` does (whose result is
    view 0), then `cut_views`: for 5 and 10 torchvision's FiveCrop / TenCrop."""
    resized = eval_resized(data, resize, draft=draft, interpolation=interpolation)
    return cut_views(resized, size, size, crops)  # [V, S, S, 3]


def streaming_view_batches(data: StreamingInput, crops: int) -> Callable[..., Iterator[dict]]:
    """The evaluation batches of a streaming input with `crops` views of each image: a function
    of `rows` (as the input's `eval_batches`) yielding {'image' uint8 [R, V, S, S, 3], 'label'
    [R], 'mask' [R]}, the last batch padded, decoded in `data.workers` threads."""
    decode = functools.partial(
        encoded_views,
        crops=crops,
        size=data.image_size,
        resize=data.eval_resize,
        draft=data.jpeg_draft,
        interpolation=data.interpolation,
    )
    source, batch_size = data.eval_source, data.eval_batch_size

    def example(index: int) -> tuple[np.ndarray, int]:
        encoded, label = source.get(index)
        try:
            return decode(encoded), label
        except (PIL.UnidentifiedImageError, OSError) as error:
            raise UserError(
                f"example {index} is not a readable image ({error}): replace it"
            ) from None

    def batches(rows: slice | None = None) -> Iterator[dict]:
        rows = rows or slice(0, batch_size)
        shape = (rows.stop - rows.start, crops, data.image_size, data.image_size, 3)
        with concurrent.futures.ThreadPoolExecutor(data.workers) as pool:

            def submit(start: int) -> list:
                # This process's real rows of the batch at `start`; the rest is padding.
                end = min(start + rows.stop, start + batch_size, len(source))
                return [pool.submit(example, index) for index in range(start + rows.start, end)]

            queued = collections.deque()
            for start in range(0, len(source), batch_size):
                queued.append(submit(start))  # decoded while the devices take the last one
                if len(queued) > 1:
                    yield _collect(queued.popleft(), shape)
            while queued:
                yield _collect(queued.popleft(), shape)

    return batches


def _collect(futures: list, shape: tuple[int, ...]) -> dict:
    batch = {
        "image": np.zeros(shape, np.uint8),  # padding rows stay zeros, masked out
        "label": np.zeros(shape[0], np.int32),
        "mask": np.zeros(shape[0], np.float32),
    }
    for row, future in enumerate(futures):  # real rows come first
        batch["image"][row], batch["label"][row] = future.result()
        batch["mask"][row] = 1.0
    return batch


def view_batches(trained: TrainedRun, crops: int, padding: int) -> Callable[..., Iterator[dict]]:
    """The run's evaluation batches with `crops` views [B, V, ...] of each image: cut from the
    image zero-padded by `padding` (in-memory inputs) or from the resized image (streaming)."""
    data = trained.input
    if isinstance(data, StreamingInput):
        return streaming_view_batches(data, crops)
    # The pipeline upscales by an integer factor after the training crops: cropping the
    # upscaled image at multiples of the factor is the same as upscaling the crops.
    scaled = padding * data.augment.upscale
    return map_images(
        data.eval_batches, functools.partial(padded_views, padding=scaled, crops=crops)
    )


def _check_run(trained: TrainedRun, crop_padding: int | None) -> None:
    cfg = trained.config.data
    if cfg.task == "segmentation":
        raise UserError(
            "--crops: multi-crop testing is for classification: a segmentation run's labels "
            "would need the same crops"
        )
    if len(trained.input_shape) != 3:
        shape = "x".join(map(str, trained.input_shape))
        raise UserError(f"--crops needs images [H, W, C]; this run's inputs are {shape}")
    if cfg.get("pixel_permutation_seed", -1) >= 0:
        raise UserError(
            "--crops: this run trained on shuffled pixels (data.pixel_permutation_seed), whose "
            "crops and mirrors mean nothing; evaluate it with plain `cnnjax eval`"
        )
    streaming = isinstance(trained.input, StreamingInput)
    if streaming and crop_padding is not None:
        raise UserError(
            "--crop_padding is for in-memory datasets: this run's crops come from the image "
            "resized to data.eval_resize"
        )
    if crop_padding is not None and crop_padding < 0:
        raise UserError(f"--crop_padding={crop_padding}: give 0 or more pixels")


def _headline(sums: dict) -> dict:
    summary = summarize_evaluation(sums)
    top_k = f"top_{summary['top_k']}_accuracy"
    return {key: summary[key] for key in (*HEADLINE, top_k)}


def _views_description(trained: TrainedRun, crops: int, padding: int | None) -> dict:
    """crops, views, mirrored, trained_with_flips, crop_padding (in-memory inputs, `padding`
    not None) or eval_resize (streaming), and notes on views that coincide or mirror a run
    trained without mirrors."""
    # The streaming training transform always mirrors at random (image_decoding.py).
    flips = padding is None or bool(trained.config.data.augment.horizontal_flip)
    described = {
        "crops": crops,
        "views": list(VIEW_NAMES[crops]),
        "mirrored": crops in (2, 10),
        "trained_with_flips": flips,
        "notes": [],
    }
    if padding is None:
        described["eval_resize"] = trained.input.eval_resize
    else:
        described["crop_padding"] = padding
        if padding == 0 and crops >= 5:
            described["notes"].append(
                "crop padding 0: the five crop positions coincide (give --crop_padding=P)"
            )
    if described["mirrored"] and not flips:
        described["notes"].append("this run trained without horizontal flips: mirrored views")
    return described


def evaluate_multicrop(
    trained: TrainedRun,
    crops: int = 10,
    *,
    crop_padding: int | None = None,
    use_ema: bool = False,
    checkpoint: str = "best",
) -> dict:
    """Multi-crop testing of `trained` on its evaluation split: the softmax averaged over
    `crops` views (1, 2, 5 or 10) of each image, next to the usual 1-crop evaluation.

    `crop_padding`: in-memory datasets only, the zero padding the views are cut from (None: the
    run's data.augment.random_crop_padding). `checkpoint` is only recorded. Writes metrics.json
    to `DIR/eval/step_<STEP>_<SPLIT>_<N>crop/` and returns the result: the run's description,
    crops, views (names), mirrored, trained_with_flips, crop_padding (in-memory) or
    eval_resize (streaming), notes, and `one_crop` and `multi_crop`: count, top_k, loss,
    top_1_accuracy, top_k accuracy, ece, mce (the loss is the negative log of the averaged
    probability of the label).
    """
    check_crops(crops)
    _check_run(trained, crop_padding)
    augment = trained.config.data.augment
    streaming = isinstance(trained.input, StreamingInput)
    padding = augment.random_crop_padding if crop_padding is None else crop_padding
    result = {
        **run_description(trained, checkpoint, use_ema),
        **_views_description(trained, crops, None if streaming else padding),
    }
    one = trained.evaluation_sums(use_ema=use_ema)
    result["one_crop"] = _headline(one)
    if crops == 1:  # the usual evaluation, exactly
        result["multi_crop"] = dict(result["one_crop"])
    else:
        views = view_batches(trained, crops, padding)
        result["multi_crop"] = _headline(trained.multi_view_sums(views, use_ema=use_ema))
    slug = split_slug(trained.config.data.eval_split, use_ema)
    # A padding other than the run's own is another evaluation: its own folder.
    own = streaming or padding == augment.random_crop_padding
    name = f"step_{trained.step}_{slug}_{crops}crop" + ("" if own else f"_pad{padding}")
    folder = os.path.join(trained.workdir, "eval", name)
    result["paths"] = {"metrics.json": os.path.join(folder, "metrics.json")}

    def write(local: str) -> None:
        with open(os.path.join(local, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)

    write_results(folder, write)
    return result


def multicrop_workdir(
    workdir: str,
    checkpoint: str = "best",
    *,
    crops: int = 10,
    crop_padding: int | None = None,
    split: str | None = None,
    use_ema: bool = False,
) -> dict:
    """`evaluate_multicrop` of checkpoint `checkpoint` (best | latest | STEP) of the run in
    `workdir`, on its evaluation split or TFDS split `split`."""
    check_crops(crops)
    trained = load_for_evaluation(workdir, checkpoint, split=split, use_ema=use_ema)
    return evaluate_multicrop(
        trained, crops, crop_padding=crop_padding, use_ema=use_ema, checkpoint=checkpoint
    )


def format_multicrop(result: dict) -> str:
    """A few lines for the terminal: 1-crop and N-crop numbers side by side, notes, the path."""
    one, multi = result["one_crop"], result["multi_crop"]
    top_k = f"top_{one['top_k']}_accuracy"
    where = (
        f"resized to {result['eval_resize']}"
        if "eval_resize" in result
        else f"padding {result['crop_padding']}"
    )
    ema = " (EMA weights)" if result["use_ema"] else ""
    lines = [
        f"step {result['step']} (--checkpoint={result['checkpoint']}){ema} of {result['model']} "
        f"on {result['dataset']} {result['split']}: {one['count']:,} examples, "
        f"{result['crops']} view{'s' if result['crops'] > 1 else ''} "
        f"({where}{', mirrored' if result['mirrored'] else ''})",
        f"  {'':>8} {'top-1':>8} {'top-' + str(one['top_k']):>8} {'loss':>8} {'ECE':>8}",
    ]
    multi_name = f"{result['crops']} crop{'s' if result['crops'] > 1 else ''}"
    for name, row in (("1 crop", one), (multi_name, multi))[: 1 if result["crops"] == 1 else 2]:
        lines.append(
            f"  {name:>8} {row['top_1_accuracy']:8.4f} {row[top_k]:8.4f} {row['loss']:8.4f} "
            f"{row['ece']:8.4f}"
        )
    lines += [f"  note: {note}" for note in result["notes"]]
    lines.append(f"  metrics: {result['paths']['metrics.json']}")
    return "\n".join(lines)

"""`cnnjax predict`: a run's logits for new inputs, in batches, on every device of the run's mesh.

Inputs are either an .npy array of images already preprocessed as the model expects
(float32 [N, H, W, C]), or a folder of image files, which go through the run's evaluation
transform (shorter side to `data.eval_resize`, center crop `data.image_size`, its
interpolation) and normalization, as `cnnjax eval` feeds them. The logits (float32 [N, K]) are
written as .npy; for a folder, the files in row order are written beside them (.txt).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import parallel
from cnnjax.data.image_decoding import EVAL_CROP_FRACTION, eval_transform
from cnnjax.data.image_sources import IMAGE_EXTENSIONS
from cnnjax.data.imagenet import imagenet_normalization
from cnnjax.data.inputs import STREAMING_DATASETS, make_input
from cnnjax.data.normalization import Normalization
from cnnjax.errors import UserError
from cnnjax.files import read_text, resolve
from cnnjax.train.checkpoints import read_saved_state
from cnnjax.train.run import TRAIN_STATS_FILE, build_model
from cnnjax.train.trained_run import read_run_config


def _run_facts(workdir: str, config) -> tuple[int, Normalization | None]:
    """The run's class count and the normalization of its uint8 inputs (None: its inputs are
    float32 already), from train_split_stats.json, else from its dataset."""
    text = read_text(os.path.join(workdir, TRAIN_STATS_FILE))
    if config.data.name in STREAMING_DATASETS:
        if text is not None:
            return int(json.loads(text)["num_classes"]), imagenet_normalization()
        return make_input(config).num_classes, imagenet_normalization()
    if text is not None:
        saved = json.loads(text)
        return int(saved["num_classes"]), Normalization.standardize(saved["mean"], saved["std"])
    data = make_input(config)
    return data.num_classes, getattr(data, "normalization", None)


def read_folder(folder: str, config) -> tuple[np.ndarray, list[str]]:
    """The image files under `folder` (sorted, recursively) through the run's evaluation
    transform: uint8 [N, S, S, 3] and the paths in row order."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    size = config.data.image_size
    resize = config.data.get("eval_resize") or round(size / EVAL_CROP_FRACTION)
    images = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            images.append(
                eval_transform(
                    data,
                    size,
                    resize,
                    draft=config.data.get("jpeg_draft", True),
                    interpolation=config.data.get("interpolation", "bilinear"),
                )
            )
        except OSError as error:
            raise UserError(f"{path} is not a readable image ({error})") from None
    return np.stack(images), paths


def predict(
    workdir: str,
    inputs: str,
    output: str,
    *,
    checkpoint: str = "best",
    batch_size: int = 64,
    use_ema: bool = False,
) -> dict:
    """Writes the logits of checkpoint `checkpoint` of the run in `workdir` for `inputs` (an
    .npy of preprocessed images, or a folder of image files) to `output` (.npy); returns a
    summary (rows, classes, step, files)."""
    workdir = resolve(workdir)
    config = read_run_config(workdir)
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: use at least 1")
    saved, step = read_saved_state(workdir, checkpoint)
    params = saved.get("ema_params") if use_ema else saved.get("params")
    if not params:
        raise UserError("this run kept no moving average of its weights (train.ema_decay=0)")
    num_classes, normalization = _run_facts(workdir, config)
    paths = None
    if os.path.isdir(inputs):
        if config.data.name not in STREAMING_DATASETS:
            raise UserError(
                f"--inputs={inputs} is a folder, but this run trained on {config.data.name!r} "
                "arrays: give an .npy of its preprocessed images"
            )
        images, paths = read_folder(inputs, config)
    elif inputs.endswith(".npy") and os.path.isfile(inputs):
        images, normalization = np.load(inputs), None
        if images.ndim < 3:
            raise UserError(f"{inputs} holds shape {images.shape}: give images [N, H, W, C]")
    else:
        raise UserError(f"--inputs={inputs}: give an .npy file of images or a folder of images")

    model = build_model(config, num_classes)
    mesh = parallel.data_mesh(config.parallel.num_devices)
    variables = parallel.replicate(
        {"params": params, "batch_stats": saved.get("batch_stats") or {}}, mesh
    )

    @jax.jit
    def logits_of(variables, batch):
        x = batch["image"]
        x = normalization(x) if normalization is not None else x.astype(jnp.float32)
        return model.apply(variables, x, train=False).astype(jnp.float32)

    rows, rows_per_batch = [], min(batch_size, len(images))
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        # Every batch padded to one shape (a multiple of the devices): compiled once.
        padding = np.zeros((rows_per_batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
        padded = np.concatenate([chunk, padding])
        batch = parallel.pad_to_devices({"image": padded, "mask": np.ones(len(padded))}, mesh)
        sharded = parallel.shard_batch({"image": batch["image"]}, mesh)
        rows.append(np.asarray(jax.device_get(logits_of(variables, sharded)))[: len(chunk)])
    logits = np.concatenate(rows)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.save(output, logits)
    if paths is not None:
        with open(os.path.splitext(output)[0] + ".txt", "w") as f:
            f.write("".join(f"{path}\n" for path in paths))
    return {"rows": len(logits), "classes": int(logits.shape[1]), "step": step, "files": paths}

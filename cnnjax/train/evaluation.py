"""The one evaluator, used by the training loop and by `cnnjax eval`: a pure step that returns
masked sums, and the metrics derived from them.

`eval_step(state, batch, options) -> sums` counts, over the examples (or pixels) whose `mask` is 1,
the loss, top-1 and top-k hits, the confusion matrix and a calibration histogram over the
confidence (the largest softmax probability). Everything is a sum, so the sums of any split of
the data into batches add up to the same totals, and `summarize_evaluation(sums)` turns the
totals into accuracies, per-class accuracy, expected / maximum calibration error and mean IoU.
`multi_view_eval_step` gives the same sums for the softmax averaged over several views of each
example (multi-crop testing), and `map_images` runs any evaluation on transformed images.

Counts are int32: a float32 sum stops being exact past 2**24 (16.8M), which the pixel counts of
a dense task's test split exceed.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import parallel
from cnnjax.data.normalization import model_inputs
from cnnjax.train.state import TrainState
from cnnjax.train.steps import StepOptions, cast_floats, model_variables

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]
NUM_BINS = 15  # calibration bins, as in Guo et al. 2017 ("On Calibration of Modern Neural Nets")
TOP_K = 5


def _top_k_key(sums: dict) -> str:
    """The name of the top-k hit count in `sums`, e.g. "top_5_correct": k is in the name so
    that the sums describe themselves (with one class, k = 1 and it is top_1_correct)."""
    keys = [k for k in sums if k.startswith("top_") and k.endswith("_correct")]
    others = [k for k in keys if k != "top_1_correct"]
    if len(others) > 1:
        raise ValueError(f"expected one top-k count in the sums, found {others}")
    return others[0] if others else "top_1_correct"


def eval_step(
    state: TrainState,
    batch: Batch,
    options: StepOptions,
    *,
    use_ema: bool = False,
    num_bins: int = NUM_BINS,
    top_k: int = TOP_K,
) -> Sums:
    """Evaluation sums on `batch` {'image', 'label' [B] or [B, H, W], 'mask' [B]}.

    Returns count, loss_sum, top_1_correct, top_{k}_correct (k = min(top_k, num_classes)),
    confusion [true, predicted], and per calibration bin (equal widths on [0, 1] over the
    confidence): bin_count, bin_confidence (sum) and bin_correct. Examples with mask 0 count for
    nothing. `options.compute_dtype` (e.g. bfloat16) casts parameters and images as in
    training; `use_ema` evaluates the moving average of the weights. With
    `options.eval_mirrored` the scores are those of the softmax averaged over each image and
    its mirror (`view_log_probs`).
    """
    if options.eval_mirrored:
        image = batch["image"]  # [B, H, W, C]
        views = jnp.stack([image, image[:, :, ::-1]], axis=1)  # [B, 2, H, W, C]
        logits = view_log_probs(state, views, options, use_ema=use_ema)
    else:
        images = model_inputs(batch["image"], options.normalization)  # uint8 -> float32 here
        logits = _logits(state, images, options.dtype, use_ema)
    return sums_from_logits(
        logits, batch["label"], batch["mask"], options.num_classes, num_bins=num_bins, top_k=top_k
    )


def sums_from_logits(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    num_classes: int,
    *,
    num_bins: int = NUM_BINS,
    top_k: int = TOP_K,
) -> Sums:
    """The sums of `eval_step` from float32 `logits` [B, K] or [B, H, W, K] (or any scores
    whose log-softmax is the predicted log-probabilities), `labels` [B] or [B, H, W] and `mask`
    [B]."""
    mask = jnp.broadcast_to(mask.reshape(-1, *([1] * (labels.ndim - 1))), labels.shape)
    # One row per counted unit (example or pixel): logits [N, K], labels and counted [N].
    logits = logits.reshape(-1, num_classes)
    labels, counted = labels.reshape(-1), (mask.reshape(-1) > 0).astype(jnp.int32)
    # `where`, not a product: padding must add nothing even if its logits are not finite.
    masked = lambda values: jnp.where(counted > 0, values, 0)  # noqa: E731

    log_probs = jax.nn.log_softmax(logits)
    losses = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    predictions = logits.argmax(-1)
    hit = masked((predictions == labels).astype(jnp.int32))
    k = min(top_k, num_classes)
    _, top_indices = jax.lax.top_k(logits, k)  # ties go to the lower index, as in argmax
    top_k_hit = masked((top_indices == labels[:, None]).any(-1).astype(jnp.int32))

    confidence = masked(jnp.exp(log_probs.max(-1)))
    # Bin b holds confidences in [b / num_bins, (b + 1) / num_bins); a confidence of 1 the last.
    bins = jnp.clip(jnp.floor(confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    per_bin = lambda values: jnp.zeros(num_bins, values.dtype).at[bins].add(values)  # noqa: E731
    return {
        "count": counted.sum(),
        "loss_sum": masked(losses).sum(),
        "top_1_correct": hit.sum(),
        f"top_{k}_correct": top_k_hit.sum(),
        "confusion": jnp.zeros((num_classes, num_classes), jnp.int32)
        .at[labels, predictions]
        .add(counted),
        "bin_count": per_bin(counted),
        "bin_confidence": per_bin(confidence),
        "bin_correct": per_bin(hit),
    }


def view_log_probs(
    state: TrainState, views: jax.Array, options: StepOptions, *, use_ema: bool = False
) -> jax.Array:
    """Log of the softmax averaged over the views of each example (multi-crop testing).

    `views`: [B, V, H, W, C] (uint8, normalized here as in `eval_step`, or float). Returns
    float32 [B, K]: log(mean over V of softmax(logits)). With one view these are the model's
    logits themselves, so that 1-view sums are `eval_step`'s.
    """
    batch, num_views = views.shape[:2]
    images = model_inputs(views.reshape(batch * num_views, *views.shape[2:]), options.normalization)
    logits = _logits(state, images, options.dtype, use_ema)  # [B * V, K]
    logits = logits.reshape(batch, num_views, -1)
    if num_views == 1:
        return logits[:, 0]
    # log(mean(softmax)) = logsumexp over the views of the log-softmaxes, minus log V.
    return jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=1) - jnp.log(num_views)


def multi_view_eval_step(
    state: TrainState,
    batch: Batch,
    options: StepOptions,
    *,
    use_ema: bool = False,
    num_bins: int = NUM_BINS,
    top_k: int = TOP_K,
) -> Sums:
    """`eval_step`'s sums for the softmax averaged over views: `batch` {'image' [B, V, H, W, C],
    'label' [B], 'mask' [B]}; the loss is the negative log of the averaged probability of the
    label, the confidence the largest averaged probability (`view_log_probs`)."""
    log_probs = view_log_probs(state, batch["image"], options, use_ema=use_ema)
    return sums_from_logits(
        log_probs,
        batch["label"],
        batch["mask"],
        options.num_classes,
        num_bins=num_bins,
        top_k=top_k,
    )


def _logits(state: TrainState, images: jax.Array, compute_dtype, use_ema: bool) -> jax.Array:
    """The model's float32 logits in inference mode (batch statistics, no dropout)."""
    params = state.ema_params if use_ema else state.params
    return state.apply_fn(
        model_variables(cast_floats(params, compute_dtype), state.batch_stats),
        cast_floats(images, compute_dtype),
        train=False,
    ).astype(jnp.float32)


def add_sums(total: Sums | None, new: Sums) -> Sums:
    """`total + new`, key by key, on device (no host sync); `new` when `total` is None."""
    return new if total is None else jax.tree.map(jnp.add, total, new)


def device_prefetch(
    batches: Iterator[dict], size: int = 2, mesh=None, global_rows: int | None = None
) -> Iterator[dict]:
    """Keeps `size` batches in flight to the devices (split over `mesh` when given; evaluation
    batches, which carry a 'mask', padded to a multiple of its devices); transfers are
    asynchronous. With `global_rows`, each batch is this process's rows of a global batch of
    `global_rows` (`parallel.shard_batch`), already padded."""
    queue = collections.deque()
    for batch in batches:
        if mesh is not None and "mask" in batch and global_rows is None:
            batch = parallel.pad_to_devices(batch, mesh)
        queue.append(
            parallel.shard_batch(batch, mesh, global_rows)
            if mesh is not None
            else jax.device_put(batch)
        )
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def device_batches(
    make_batches: Callable[..., Iterator[dict]], batch_size: int | None, mesh=None
) -> Iterator[dict]:
    """The batches of `make_batches()` (an input's `train_batches` with its start step bound,
    or its `eval_batches`) on the devices of `mesh`.

    On many processes, when `batch_size` (the global one) is known and `make_batches` takes
    `rows`, each process makes only the rows of its own devices (`parallel.local_batch_rows`):
    no host reads or decodes the examples of another host's devices. Otherwise every process
    makes the whole batch and hands over its own rows.
    """
    if (
        mesh is None
        or jax.process_count() == 1
        or batch_size is None
        or not _takes_rows(make_batches)
    ):
        return device_prefetch(make_batches(), mesh=mesh)
    rows, global_rows = parallel.local_batch_rows(batch_size, mesh)
    return device_prefetch(make_batches(rows=rows), mesh=mesh, global_rows=global_rows)


def _takes_rows(make_batches) -> bool:
    try:
        return "rows" in inspect.signature(make_batches).parameters
    except (TypeError, ValueError):  # no signature to read: the whole batch
        return False


def evaluation_sums(
    eval_fn, state: TrainState, batches, mesh=None, *, batch_size: int | None = None
) -> dict:
    """The totals of `eval_fn(state, batch)` sums over every batch, as numpy on the host.

    `batches`: an iterator of (global) evaluation batches, or an input's `eval_batches` itself
    with the global `batch_size`, so that on many processes each makes only its own rows
    (`device_batches`). The sums come out global either way: the step's output is replicated.
    """
    if callable(batches):
        on_devices = device_batches(batches, batch_size, mesh)
    else:
        on_devices = device_prefetch(batches, mesh=mesh)
    sums = None
    for batch in on_devices:
        sums = add_sums(sums, eval_fn(state, batch))
    if sums is None:
        raise ValueError("no evaluation batch: the evaluation split is empty")
    return jax.device_get(sums)


def loss_and_accuracy(sums: dict, *, with_mean_iou: bool = False) -> dict[str, float]:
    """What the training loop records of an evaluation: loss, (top-1) accuracy, and mean IoU
    for dense tasks."""
    denominator = max(int(sums["count"]), 1)
    metrics = {
        "loss": float(sums["loss_sum"]) / denominator,
        "accuracy": int(sums["top_1_correct"]) / denominator,
    }
    if with_mean_iou:
        metrics["mean_iou"] = mean_iou(np.asarray(sums["confusion"], np.int64))
    return metrics


def calibration(sums: dict) -> dict:
    """Expected and maximum calibration error over the bins of `sums`, and the bin table.

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b|; MCE = max_b over non-empty bins. Each
    table row has the bin's edges, count, mean confidence and accuracy (None when empty).
    """
    counts = np.asarray(sums["bin_count"], np.float64)
    confidence = np.asarray(sums["bin_confidence"], np.float64)
    correct = np.asarray(sums["bin_correct"], np.float64)
    num_bins, total = len(counts), max(counts.sum(), 1.0)
    filled = counts > 0
    gaps = np.abs(correct[filled] - confidence[filled]) / counts[filled]
    table = [
        {
            "lower": b / num_bins,
            "upper": (b + 1) / num_bins,
            "count": int(counts[b]),
            "confidence": float(confidence[b] / counts[b]) if counts[b] else None,
            "accuracy": float(correct[b] / counts[b]) if counts[b] else None,
        }
        for b in range(num_bins)
    ]
    return {
        "ece": float((counts[filled] / total * gaps).sum()),
        "mce": float(gaps.max()) if gaps.size else 0.0,
        "bins": table,
    }


def per_class(confusion: np.ndarray) -> list[dict]:
    """Per true class: count, correct, accuracy (recall), predicted count and precision; rates
    are None where their denominator is 0 (so the result holds no NaN)."""
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    rows = []
    for c in range(len(confusion)):
        correct = int(confusion[c, c])
        rows.append(
            {
                "count": int(true_counts[c]),
                "correct": correct,
                "accuracy": correct / int(true_counts[c]) if true_counts[c] else None,
                "predicted": int(predicted_counts[c]),
                "precision": correct / int(predicted_counts[c]) if predicted_counts[c] else None,
            }
        )
    return rows


def mean_iou(confusion: np.ndarray) -> float:
    """TP / (TP + FP + FN) averaged over the classes that occur or are predicted."""
    true_positives = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - true_positives
    return float((true_positives[union > 0] / union[union > 0]).mean())


def summarize_evaluation(sums: dict, *, with_mean_iou: bool = False) -> dict:
    """Plain-Python metrics (JSON-ready) from the totals of `eval_step` sums.

    Returns count, top_k (the k), loss, top_1_accuracy, top_{k}_accuracy, per_class_accuracy
    (None for a class with no example), per_class rows, ece, mce, calibration bins, confusion
    (nested int lists) and, with `with_mean_iou` (dense tasks), mean_iou.
    """
    count = int(sums["count"])
    denominator = max(count, 1)
    confusion = np.asarray(sums["confusion"], np.int64)
    top_k = _top_k_key(sums)
    rows = per_class(confusion)
    summary = {
        "count": count,
        "top_k": int(top_k.split("_")[1]),
        "loss": float(sums["loss_sum"]) / denominator,
        "top_1_accuracy": int(sums["top_1_correct"]) / denominator,
        top_k.replace("_correct", "_accuracy"): int(sums[top_k]) / denominator,
    }
    if with_mean_iou:
        summary["mean_iou"] = mean_iou(confusion)
    reliability = calibration(sums)
    summary.update(
        ece=reliability["ece"],
        mce=reliability["mce"],
        per_class_accuracy=[row["accuracy"] for row in rows],
        per_class=rows,
        calibration=reliability["bins"],
        confusion=confusion.tolist(),
    )
    return summary


def map_images(
    make_batches: Callable[..., Iterator[dict]], transform: Callable[[np.ndarray], np.ndarray]
) -> Callable[..., Iterator[dict]]:
    """`make_batches` (an input's `eval_batches`, taking `rows` or not) with `transform` applied
    to the images of every batch, on the host: e.g. a perturbation of the uint8 images
    (cnnjax/data/perturbations.py) or the views of multi-crop testing. Labels and masks pass
    unchanged; the result takes `rows` like `make_batches` does."""

    def batches(rows: slice | None = None) -> Iterator[dict]:
        source = make_batches() if rows is None else make_batches(rows=rows)
        try:
            for batch in source:
                yield {**batch, "image": transform(np.asarray(batch["image"]))}
        finally:
            source.close()  # stops the input's decoding threads now, not when collected

    return batches

"""Attribution maps: which input values a trained model's class score depends on.

Every function takes (model, variables, images, classes[, key]) with `images` the model's
normalized float inputs [B, *spatial, C] and `classes` int [B], runs the model in eval mode
(`train=False`) and returns one map per example [B, *spatial] (the raw gradients [B, *spatial, C]
for `input_gradient` and `smooth_gradient`). The score of example b is its pre-softmax logit of
`classes[b]`; for per-pixel logits [B, H, W, K] (segmentation) the center pixel's.

- `saliency`: max over channels of |d score / d x| (Simonyan et al. 2014);
- `gradient_times_input`: sum over channels of x * d score / d x, signed (Shrikumar et al. 2016);
  for a model linear in x without bias its sum over pixels is the score (completeness);
- `smoothgrad`: `saliency` of the mean gradient over `samples` noisy copies of each image, noise
  std = sigma * (max - min) of that image (Smilkov et al. 2017); reduced over channels like
  `saliency`, so the two differ only by the smoothing;
- `occlusion`: the drop of the class's probability (or logit) when a patch of the input is set
  to `fill` (Zeiler & Fergus 2014), per pixel the mean drop over the patches that cover it.

Summing the scores over the batch gives every example's own gradient, since in eval mode examples
do not interact. Each computation is one `jax.jit` with the model static, so it is traced and
compiled once per model and input shape.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import UserError

SMOOTHGRAD_SAMPLES = 25  # half the paper's 50 (little changes past it), at half the cost
SMOOTHGRAD_SIGMA = 0.15  # noise std / (max - min) of the image: the paper's 10-20% sweet spot
OCCLUSION_PATCHES = 7  # default patch: about 1/7 of each image axis (4 px on 28x28)
OCCLUDED_COPIES = 256  # occluded images per forward pass: bounds the memory of `occlusion`
SCORES = ("probability", "logit")


def class_scores(logits: jax.Array, classes: jax.Array, score: str = "logit") -> jax.Array:
    """[B, K] (or per pixel [B, ..., K]: the center pixel's) logits -> [B] scores of `classes`:
    the logit, or with `score="probability"` the softmax probability."""
    if logits.ndim > 2:
        center = tuple(size // 2 for size in logits.shape[1:-1])
        logits = logits[(slice(None), *center)]  # [B, K]
    if score == "probability":
        logits = jax.nn.softmax(logits, axis=-1)
    return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


def _total_score(model: nn.Module, variables, images, classes) -> jax.Array:
    return class_scores(model.apply(variables, images, train=False), classes).sum()


@functools.partial(jax.jit, static_argnames="model")
def _gradient(model: nn.Module, variables, images, classes) -> jax.Array:
    return jax.grad(functools.partial(_total_score, model), argnums=1)(variables, images, classes)


def _inputs(images, classes) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(images, jnp.float32), jnp.asarray(classes, jnp.int32)


def input_gradient(model: nn.Module, variables, images, classes) -> jax.Array:
    """d score / d images, [B, *spatial, C]."""
    return _gradient(model, variables, *_inputs(images, classes))


def saliency(model: nn.Module, variables, images, classes) -> jax.Array:
    """Max over channels of |d score / d x| (Simonyan et al. 2014): [B, *spatial]."""
    return jnp.abs(input_gradient(model, variables, images, classes)).max(axis=-1)


def gradient_times_input(model: nn.Module, variables, images, classes) -> jax.Array:
    """Sum over channels of x * d score / d x, signed: [B, *spatial]. Inputs are the normalized
    ones, so a pixel at the training mean (0 after standardization) gets 0 whatever its gradient:
    the map is relative to that baseline."""
    images, classes = _inputs(images, classes)
    return (images * _gradient(model, variables, images, classes)).sum(axis=-1)


@jax.jit
def _noisy(images, key, index, sigma):
    """`images` plus sample `index`'s noise, drawn from fold_in(key, index) (so the same key
    draws the same maps) at std sigma * (max - min) of each image."""
    axes = tuple(range(1, images.ndim))
    spread = images.max(axis=axes, keepdims=True) - images.min(axis=axes, keepdims=True)
    noise = jax.random.normal(jax.random.fold_in(key, index), images.shape, images.dtype)
    return images + sigma * spread * noise  # spread [B, 1, ..., 1]: per image


def smooth_gradient(
    model: nn.Module,
    variables,
    images,
    classes,
    key: jax.Array,
    *,
    samples: int = SMOOTHGRAD_SAMPLES,
    sigma: float = SMOOTHGRAD_SIGMA,
) -> jax.Array:
    """Mean of d score / d x over `samples` copies of the images with Gaussian noise of std
    sigma * (max - min) of each image, drawn from `key`: [B, *spatial, C]."""
    if samples < 1 or sigma < 0:
        raise UserError(f"SmoothGrad needs samples >= 1 and sigma >= 0, not {samples}, {sigma}")
    images, classes = _inputs(images, classes)
    # One sample at a time through the gradient `saliency` compiles: nothing more to compile
    # than the noise, and memory as for one gradient.
    total = jnp.zeros_like(images)
    for index in range(samples):
        noisy = _noisy(images, key, index, jnp.float32(sigma))
        total = total + _gradient(model, variables, noisy, classes)
    return total / samples


def smoothgrad(
    model: nn.Module,
    variables,
    images,
    classes,
    key: jax.Array,
    *,
    samples: int = SMOOTHGRAD_SAMPLES,
    sigma: float = SMOOTHGRAD_SIGMA,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): max over channels of |`smooth_gradient`|, [B, *spatial]."""
    gradient = smooth_gradient(model, variables, images, classes, key, samples=samples, sigma=sigma)
    return jnp.abs(gradient).max(axis=-1)


def occlusion_patches(
    spatial: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """Boolean masks [P, *spatial] of the patches of size `patch` at steps of `stride` along each
    axis; the last patch of an axis is moved flush with its end, so every pixel is covered."""
    per_axis = []
    for size, width, step in zip(spatial, patch, stride, strict=True):
        starts = list(range(0, size - width + 1, step))
        if starts[-1] != size - width:
            starts.append(size - width)
        masks = np.zeros((len(starts), size), bool)
        for row, start in enumerate(starts):
            masks[row, start : start + width] = True
        per_axis.append(masks)
    combos = itertools.product(*per_axis)
    return np.stack([functools.reduce(np.multiply.outer, masks) for masks in combos])


def default_patch(spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(patch, stride) per axis: about 1/7 of the image along the last two axes (the last one
    for 1-D inputs) with half-patch steps; earlier axes (the frames of a clip) whole, so that a
    clip's map costs as much as one image's."""
    patch = [max(1, round(size / OCCLUSION_PATCHES)) for size in spatial[-2:]]
    stride = [max(1, width // 2) for width in patch]
    whole = list(spatial[:-2])
    return tuple(whole + patch), tuple(whole + stride)


def _per_axis(value, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    return (int(value),) * len(default) if np.ndim(value) == 0 else tuple(map(int, value))


@functools.partial(jax.jit, static_argnames=("model", "score", "copies"))
def _occlusion(model, variables, images, classes, masks, fill, score, copies):
    def scores(x):
        return class_scores(model.apply(variables, x, train=False), classes, score)  # [B]

    def occluded(mask):  # [*spatial] -> [B]: every image with this patch filled
        return scores(jnp.where(mask[None, ..., None], fill, images))

    drops = scores(images)[None] - jax.lax.map(occluded, masks, batch_size=copies)  # [P, B]
    covered = masks.sum(axis=0)  # [*spatial]: >= 1 everywhere (occlusion_patches)
    return jnp.tensordot(drops, masks.astype(drops.dtype), axes=(0, 0)) / covered  # [B, ...]


def occlusion(
    model: nn.Module,
    variables,
    images,
    classes,
    *,
    patch: int | tuple[int, ...] | None = None,
    stride: int | tuple[int, ...] | None = None,
    fill: float | np.ndarray = 0.0,
    score: str = "probability",
) -> jax.Array:
    """Occlusion sensitivity (Zeiler & Fergus 2014): [B, *spatial], per pixel the mean, over the
    patches covering it, of score(image) - score(image with the patch set to `fill`).

    `patch`, `stride`: per spatial axis (an int for all); default `default_patch`. `fill`: a
    value, or one per channel [C], in normalized units: 0 is the training mean after
    standardization, a patch that carries no information the model was not trained with (its
    zero padding is the same value). `score`: "probability" (softmax) or "logit". The occluded
    copies go through the model `OCCLUDED_COPIES` at a time (vmapped), not one forward each.
    """
    if score not in SCORES:
        raise UserError(f"occlusion score {score!r}: choose one of {', '.join(SCORES)}")
    images, classes = _inputs(images, classes)
    spatial = images.shape[1:-1]
    default_size, default_stride = default_patch(spatial)
    patch, stride = _per_axis(patch, default_size), _per_axis(stride, default_stride)
    fits = len(patch) == len(stride) == len(spatial) and min(stride) >= 1
    if not fits or any(not 1 <= p <= s for p, s in zip(patch, spatial, strict=True)):
        raise UserError(f"occlusion patch {patch} / stride {stride} must fit inputs {spatial}")
    masks = occlusion_patches(spatial, tuple(patch), tuple(stride))  # [P, *spatial]
    copies = min(len(masks), max(1, OCCLUDED_COPIES // len(images)))
    # Padded with empty masks (no change, no coverage) to whole batches of copies: one
    # compiled forward, no second one for a remainder.
    padding = np.zeros((-len(masks) % copies, *spatial), bool)
    masks = jnp.asarray(np.concatenate([masks, padding]))
    fill = jnp.asarray(fill, jnp.float32)
    return _occlusion(model, variables, images, classes, masks, fill, score, copies)

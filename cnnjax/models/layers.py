"""Building blocks shared by every model family: activations, normalization, pooling, conv block.

Activation and normalization are looked up by name here, so that every family takes them as
plain string arguments and an ablation ("relu vs tanh", "batch vs group norm") is a config change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import UserError
from cnnjax.models import conv_lowering

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01, as in Maas et al. 2013
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "identity": lambda x: x,
}

NORMALIZATIONS = ("none", "batch", "layer", "instance", "group")
# Variance as mean((x - mean)^2), not Flax's default mean(x^2) - mean^2, which cancels in float32
# when a group's mean is large next to its spread (ResNet-20 with group norm on 16x16 inputs:
# gradient 0.7% from float64 -> 1.4e-6), for one more pass over the activations.
_GROUP_NORM_OPTIONS = {"use_fast_variance": False}
POOLINGS = ("max", "average")
# The ImageNet statistics the inputs are standardized with (cnnjax/data/imagenet.py's, repeated
# here because models must not import the input pipeline; a test checks that they agree).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_activation(name: str) -> Activation:
    """Returns the activation function registered under `name`."""
    if name not in ACTIVATIONS:
        raise UserError(
            f"unknown activation {name!r}: choose one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a one-line UserError when `value` is not one of `choices`."""
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}: choose one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """How the layers compute, beyond what the architecture says: one field of every model.

    A model's fields are its identity for `jax.jit` (`state.apply_fn` is `model.apply`, a static
    field of the train state), so a model cloned with other options is traced again, where a
    switch read while tracing would silently reuse the first trace. Frozen: hashable.

    - `block_convolutions`: `ConvBlock` computes stride-1 convolutions between few channels over
      2x2 pixel blocks (cnnjax/models/conv_lowering.py), the same function in a form XLA:CPU runs
      faster; False keeps `lax.conv_general_dilated`, the model's own operation.
    - `reshape_pooling`: `pool` computes non-overlapping windows that tile the input as a
      reshape and a reduction, faster on XLA:CPU than `reduce_window`; same outputs, and the
      gradient differs only at exact ties (shared among the tied inputs instead of given to one).
    - `batch_norm_axis`: the mesh axis over which batch norm averages its batch statistics, for
      a step that maps itself over devices with `jax.shard_map` (cnnjax/train/shard_map_step.py,
      `parallel.batch_norm="sync"`); None: the statistics of the batch the layer sees (under
      `jax.jit` with a sharded batch that is already the global batch).
    - `frozen_batch_norm`: batch norm in inference mode during training too (running statistics
      used, never updated), for fine-tuning with `finetune.batch_norm="frozen"`; dropout and the
      rest of the model stay in training mode.
    """

    block_convolutions: bool = True
    reshape_pooling: bool = True
    batch_norm_axis: str | None = None
    frozen_batch_norm: bool = False

    def plain(self) -> LayerOptions:
        """These options with the plain forms: the operations the model is written with, which
        inspection tools trace and tests compare the fast forms against."""
        return dataclasses.replace(self, block_convolutions=False, reshape_pooling=False)


def with_plain_forms(model: nn.Module) -> nn.Module:
    """`model` cloned with `LayerOptions.plain()`; a module without `layer_options` unchanged."""
    options = getattr(model, "layer_options", None)
    if not isinstance(options, LayerOptions):
        return model
    return model.clone(layer_options=options.plain())


class Normalization(nn.Module):
    """Normalization by name over NHWC (or [B, F]) features.

    `batch` keeps running statistics in the `batch_stats` collection (momentum 0.9 as in the Flax
    ImageNet example); `group` uses `num_groups` groups, reduced to a divisor of the channel count
    so that narrow layers (e.g. LeNet's 6 channels) still work; `instance` is group norm with one
    channel per group. On [B, F] features (dense layers) instance norm has no spatial axes to
    normalize over, so there it is the identity. `epsilon` is added to the variance by every
    kind (PyTorch's default 1e-5; torchvision's GoogLeNet and Inception v3 use 1e-3).
    """

    kind: str = "none"
    num_groups: int = 32
    layer_options: LayerOptions = LayerOptions()
    zero_scale: bool = False  # start the scale at 0 (the last of a residual branch: Goyal et al.)
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        check_choice("normalization", self.kind, NORMALIZATIONS)
        if self.kind == "none":
            return x
        scale_init = (
            nn.initializers.zeros_init() if self.zero_scale else nn.initializers.ones_init()
        )
        if self.kind == "batch":
            train = train and not self.layer_options.frozen_batch_norm
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=self.epsilon,
                axis_name=self.layer_options.batch_norm_axis if train else None,
                scale_init=scale_init,
            )(x)
        if self.kind == "layer":
            return nn.LayerNorm(epsilon=self.epsilon, scale_init=scale_init)(x)
        channels = x.shape[-1]
        group_options = {"epsilon": self.epsilon, **_GROUP_NORM_OPTIONS}
        if self.kind == "instance":
            if x.ndim == 2:
                return x
            return nn.GroupNorm(
                num_groups=None, group_size=1, scale_init=scale_init, **group_options
            )(x)
        groups = max(g for g in range(1, min(self.num_groups, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(num_groups=groups, scale_init=scale_init, **group_options)(x)


def pool(
    x: jax.Array, kind: str, window: int, stride: int, *, layer_options: LayerOptions
) -> jax.Array:
    """Spatial pooling of `x` [B, H, W, C] with a square window, 'VALID' padding.

    With `layer_options.reshape_pooling`, non-overlapping windows that tile the input are
    computed as a reshape and a reduction, which XLA:CPU compiles far better than
    `reduce_window` (figures: benchmarks/results/fast_paths.json). The result is identical to
    `nn.max_pool` / `nn.avg_pool`; only the gradient at exact ties differs (shared among the tied
    inputs instead of given to one).
    """
    check_choice("pooling", kind, POOLINGS)
    batch, height, width, channels = x.shape
    tiles_input = window == stride and height % window == 0 and width % window == 0
    if tiles_input and layer_options.reshape_pooling:
        tiles = x.reshape(batch, height // window, window, width // window, window, channels)
        return tiles.max(axis=(2, 4)) if kind == "max" else tiles.mean(axis=(2, 4))
    reduce = nn.max_pool if kind == "max" else nn.avg_pool
    return reduce(x, (window, window), strides=(stride, stride), padding="VALID")


class ConvBlock(nn.Module):
    """Convolution -> normalization -> activation, the unit every family stacks.

    Works in 1, 2 or 3 spatial dimensions (inferred from the input: [B, L, C], [B, H, W, C] or
    [B, T, H, W, C]); an int kernel size, stride, padding or dilation applies to every spatial
    axis. The bias is dropped when a normalization with its own shift follows (it would be
    redundant). Flax's convolution is a cross-correlation, as in every deep learning library and
    the course.
    """

    features: int
    kernel_size: int | tuple[int, ...]
    strides: int = 1
    padding: str | int = "VALID"
    activation: str = "relu"
    normalization: str = "none"
    dilation: int = 1
    layer_options: LayerOptions = LayerOptions()
    zero_norm_scale: bool = False  # the normalization's scale starts at 0 (Normalization)
    norm_epsilon: float = 1e-5  # added to the variance by the normalization (Normalization)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        spatial = x.ndim - 2
        kernel = self.kernel_size
        kernel = (kernel,) * spatial if isinstance(kernel, int) else tuple(kernel)
        padding = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * spatial
        x = nn.Conv(
            self.features,
            kernel,
            strides=(self.strides,) * spatial,
            padding=padding,
            kernel_dilation=(self.dilation,) * spatial,
            use_bias=self.normalization == "none",
            # Few channels: forward and input gradient over 2x2 pixel blocks (conv_lowering).
            conv_general_dilated=(
                conv_lowering.convolution if self.layer_options.block_convolutions else None
            ),
        )(x)
        x = Normalization(
            self.normalization,
            layer_options=self.layer_options,
            zero_scale=self.zero_norm_scale,
            epsilon=self.norm_epsilon,
        )(x, train=train)
        return get_activation(self.activation)(x)


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels (Krizhevsky et al. 2012, section 3.3).

    b_c = a_c / (k + alpha * sum_{c' within size/2 of c} a_{c'}^2) ** beta, with the paper's
    constants as defaults. Unlike PyTorch's LocalResponseNorm, alpha is not divided by `size`.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        half = self.size // 2
        window_sums = jax.lax.reduce_window(
            x * x,
            0.0,
            jax.lax.add,
            (1,) * (x.ndim - 1) + (self.size,),
            (1,) * x.ndim,
            [(0, 0)] * (x.ndim - 1) + [(half, self.size - 1 - half)],
        )
        return x / (self.k + self.alpha * window_sums) ** self.beta


def adaptive_avg_pool(x: jax.Array, output_size: int, *, layer_options: LayerOptions) -> jax.Array:
    """Averages [B, H, W, C] into [B, output_size, output_size, C] bins as in PyTorch.

    Bin i covers rows floor(i * H / n) .. ceil((i + 1) * H / n); when H is a multiple of n this
    is plain average pooling, and the identity when H == n.
    """
    height, width = x.shape[1:3]
    if (height, width) == (output_size, output_size):
        return x
    if height == width and height % output_size == 0:
        side = height // output_size
        return pool(x, "average", side, side, layer_options=layer_options)
    return _adaptive_bins(x, output_size)


def _adaptive_bins(x: jax.Array, n: int) -> jax.Array:
    height, width = x.shape[1:3]
    rows = []
    for i in range(n):
        r0, r1 = (i * height) // n, -(-((i + 1) * height) // n)
        cols = []
        for j in range(n):
            c0, c1 = (j * width) // n, -(-((j + 1) * width) // n)
            cols.append(x[:, r0:r1, c0:c1].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def imagenet_to_signed_range(x: jax.Array) -> jax.Array:
    """ImageNet-standardized images `x` [B, H, W, 3] re-standardized to (pixel - 0.5) / 0.5.

    `x` holds (pixel - mean_c) / std_c per channel c of the last axis (pixels in [0, 1], the
    statistics `IMAGENET_MEAN` / `IMAGENET_STD`); the result is (pixel - 0.5) / 0.5, in [-1, 1],
    i.e. x * (std_c / 0.5) + (mean_c - 0.5) / 0.5: the inputs that torchvision's GoogLeNet and
    Inception v3 weights (ported from TensorFlow) were trained on, which torchvision computes this
    way under `transform_input=True`. The factors are worked out in float64 and rounded to
    `x.dtype`, as PyTorch rounds those Python scalars.
    """
    if x.shape[-1] != len(IMAGENET_MEAN):
        raise UserError(
            f"transform_input re-standardizes RGB images, these have {x.shape[-1]} channels: "
            "set transform_input=False"
        )
    scale = jnp.asarray([std / 0.5 for std in IMAGENET_STD], x.dtype)
    offset = jnp.asarray([(mean - 0.5) / 0.5 for mean in IMAGENET_MEAN], x.dtype)
    return x * scale + offset  # [B, H, W, 3]

"""Building blocks shared by every model family: activations, normalization, pooling, conv block.

Activation and normalization are looked up by name here, so that every family takes them as
plain string arguments and an ablation ("relu vs tanh", "batch vs group norm") is a config change.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
# "group:<G>": group norm with G groups instead of Normalization.num_groups (32), which narrow
# nets reduce to one channel per group, i.e. to instance norm (LeNet-5, ResNet-20's first stages).
GROUP_PREFIX = "group:"
# Variance as mean((x - mean)^2), not Flax's default mean(x^2) - mean^2, which cancels in float32
# when a group's mean is large next to its spread (ResNet-20 with group norm on 16x16 inputs:
# gradient 0.7% from float64 -> 1.4e-6), for one more pass over the activations.
_GROUP_NORM_OPTIONS = {"use_fast_variance": False}
POOLINGS = ("max", "average")
# The ImageNet statistics the inputs are standardized with (cnnjax/data/imagenet.py's, repeated
# here because models must not import the input pipeline; a test checks that they agree).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Named activations beyond ACTIVATIONS: "leaky_relu:<slope>" and the learned "prelu".
LEAKY_RELU_PREFIX = "leaky_relu:"
PRELU = "prelu"


class PReLU(nn.Module):
    """PReLU (He et al. 2015): x for x >= 0, a_c * x below, with a learned slope a_c per
    channel (the last axis), starting at the paper's 0.25. `__call__(x [..., C]) -> [..., C]`."""

    slope_init: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param("slope", nn.initializers.constant(self.slope_init), (x.shape[-1],))
        # The same expression as nn.leaky_relu, so that a slope of s gives "leaky_relu:s" exactly.
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def _new_prelu(x: jax.Array) -> jax.Array:
    return PReLU()(x)  # a new submodule of the module whose compact method calls this


def get_activation(name: str) -> Activation:
    """The activation function named `name`: a key of `ACTIVATIONS`, "leaky_relu:<slope>"
    (leaky ReLU with that negative slope, a number in [0, 1); plain "leaky_relu" is 0.01), or
    "prelu" (`PReLU`).

    For "prelu" the returned function creates a new `PReLU` submodule, with its own slopes for
    its own channel count, every time it is called: call it only inside a Flax module's compact
    method, where the submodule becomes a child of that module. A family that calls the
    function for several layers (LeNet-5's `act`) so gets one PReLU per layer. Raises a one-line
    UserError for an unknown name or a bad slope.
    """
    if name == PRELU:
        return _new_prelu
    if isinstance(name, str) and name.startswith(LEAKY_RELU_PREFIX):
        slope = _negative_slope(name)
        return functools.partial(nn.leaky_relu, negative_slope=slope)
    if name not in ACTIVATIONS:
        known = [*sorted(ACTIVATIONS), f"{LEAKY_RELU_PREFIX}<slope>", PRELU]
        raise UserError(f"unknown activation {name!r}: choose one of {', '.join(known)}")
    return ACTIVATIONS[name]


def _negative_slope(name: str) -> float:
    try:
        slope = float(name[len(LEAKY_RELU_PREFIX) :])
    except ValueError:
        slope = math.nan
    if not (math.isfinite(slope) and 0.0 <= slope < 1.0):
        raise UserError(
            f"activation {name!r}: the negative slope must be a number in [0, 1), "
            "e.g. leaky_relu:0.2"
        )
    return slope


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


def check_normalization(name: str) -> None:
    """One line for a normalization that is neither in NORMALIZATIONS nor "group:<G>", G >= 1."""
    if name.startswith(GROUP_PREFIX):
        groups = name.removeprefix(GROUP_PREFIX)
        if not (groups.isdigit() and int(groups) >= 1):
            raise UserError(
                f"normalization {name!r}: give a whole number of groups >= 1, e.g. group:4"
            )
        return
    check_choice("normalization", name, (*NORMALIZATIONS, f"{GROUP_PREFIX}<G>"))


def _group_count(kind: str, default: int, channels: int) -> int:
    """The groups of a "group" / "group:<G>" norm over `channels`: G (or `default`) reduced to
    a divisor of `channels`, so that narrow layers (LeNet's 6 channels) still work."""
    wanted = int(kind.removeprefix(GROUP_PREFIX)) if kind.startswith(GROUP_PREFIX) else default
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class Normalization(nn.Module):
    """Normalization by name over NHWC (or [B, F]) features.

    `batch` keeps running statistics in the `batch_stats` collection (momentum 0.9 as in the Flax
    ImageNet example); `group` uses `num_groups` groups and `group:<G>` G groups, reduced to a
    divisor of the channel count so that narrow layers (e.g. LeNet's 6 channels) still work
    (with 32 groups, layers of 32 channels or fewer are instance norm); `instance` is group
    norm with one
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
        check_normalization(self.kind)
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
        groups = _group_count(self.kind, self.num_groups, channels)
        return nn.GroupNorm(num_groups=groups, scale_init=scale_init, **group_options)(x)


def pool(
    x: jax.Array,
    kind: str,
    window: int,
    stride: int,
    *,
    padding: str | int = "VALID",
    ceil_mode: bool = False,
    layer_options: LayerOptions,
) -> jax.Array:
    """Pooling of `x` [B, H, W, C] (or any number of spatial axes) with a square window.

    `padding`: "VALID" (none), "SAME" (output ceil(H / stride), the padding split evenly, an odd
    pixel at the end), or an int p: p pixels on every side, at most window // 2 (PyTorch's
    limit, so that every window reads input). `ceil_mode` (VALID or int padding) is PyTorch's:
    the output size rounds up, so a last window may hang over the bottom/right edge, except
    that a window starting in the right padding is not produced. Max pooling pads with -inf
    (padding never wins). Average pooling divides as PyTorch's avg_pool2d with
    count_include_pad=True: by the window's pixels that lie within the padded input, padding
    included, so only a window hanging past the padding under `ceil_mode` divides by fewer;
    "SAME" windows lie within their padding, so they divide by the whole window (`nn.avg_pool`).

    With `layer_options.reshape_pooling`, non-overlapping unpadded windows that tile the input
    are computed as a reshape and a reduction, which XLA:CPU compiles far better than
    `reduce_window` (figures: benchmarks/results/fast_paths.json). The result is identical;
    only the gradient at exact ties differs (shared among the tied inputs instead of given to
    one). Returns [B, H_out, W_out, C].
    """
    check_choice("pooling", kind, POOLINGS)
    sizes = x.shape[1:-1]
    declared = [_declared_padding(n, window, stride, padding, ceil_mode) for n in sizes]
    pads = [
        _ceil_padding(n, window, stride, pad, ceil_mode)
        for n, pad in zip(sizes, declared, strict=True)
    ]
    tiles_input = window == stride and all(n % window == 0 for n in sizes)
    if tiles_input and not any(map(any, pads)) and layer_options.reshape_pooling:
        split = [d for n in sizes for d in (n // window, window)]
        tiles = x.reshape(x.shape[0], *split, x.shape[-1])  # [B, H / w, w, W / w, w, C]
        axes = tuple(range(2, 2 + 2 * len(sizes), 2))
        return tiles.max(axis=axes) if kind == "max" else tiles.mean(axis=axes)
    shape, strides = (window,) * len(sizes), (stride,) * len(sizes)
    if kind == "max":
        return nn.max_pool(x, shape, strides=strides, padding=pads)
    sums = nn.pool(x, 0.0, jax.lax.add, shape, strides, pads)  # [B, H_out, W_out, C]
    return sums / _window_counts(sums, sizes, window, stride, declared)


def _declared_padding(size, window, stride, padding, ceil_mode) -> tuple[int, int]:
    """(low, high) padding of one axis of `size` pixels as `padding` declares it."""
    if padding == "SAME":
        if ceil_mode:
            raise UserError("ceil_mode rounds up VALID or integer padding; SAME already does")
        total = max((-(-size // stride) - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    if padding == "VALID":
        return 0, 0
    if isinstance(padding, str) or not 0 <= padding <= window // 2:
        raise UserError(
            f"pool padding {padding!r}: use VALID, SAME or an int from 0 to half the window "
            f"({window // 2})"
        )
    return int(padding), int(padding)


def _ceil_padding(size, window, stride, declared, ceil_mode) -> tuple[int, int]:
    """`declared` with the high side extended to hold the last window under `ceil_mode`."""
    low, high = declared
    if not ceil_mode:
        return declared
    out = -(-(size + low + high - window) // stride) + 1
    if (out - 1) * stride >= size + low:  # PyTorch: no window starts in the right padding
        out -= 1
    return low, max(high, (out - 1) * stride + window - size - low)


def _window_counts(sums, sizes, window, stride, declared):
    """Per output position of `sums` [B, H_out, W_out, C], the pixels of its window within the
    padded input ([H_out, W_out, 1]); an int where every window lies within it."""
    counts = []
    for out, size, (low, high) in zip(sums.shape[1:-1], sizes, declared, strict=True):
        starts = np.arange(out) * stride - low
        counts.append(np.minimum(starts + window, size + high) - starts)
    if all((c == window).all() for c in counts):
        return window ** len(counts)
    grid = functools.reduce(np.multiply.outer, counts)
    return jnp.asarray(grid[..., None], sums.dtype)


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
    # Grouped convolution: input and output channels split into this many groups, each output
    # group reading only its input group (AlexNet's two towers); divides both channel counts.
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        spatial = x.ndim - 2
        kernel = self.kernel_size
        kernel = (kernel,) * spatial if isinstance(kernel, int) else tuple(kernel)
        padding = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * spatial
        groups = self.feature_group_count
        if x.shape[-1] % groups or self.features % groups:
            raise UserError(
                f"{groups} convolution groups must divide the input ({x.shape[-1]}) and output "
                f"({self.features}) channels: choose another group count"
            )
        x = nn.Conv(
            self.features,
            kernel,
            strides=(self.strides,) * spatial,
            padding=padding,
            kernel_dilation=(self.dilation,) * spatial,
            feature_group_count=groups,
            use_bias=self.normalization == "none",
            # Few channels: forward and input gradient over 2x2 pixel blocks (conv_lowering,
            # which leaves grouped convolutions to lax.conv_general_dilated).
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

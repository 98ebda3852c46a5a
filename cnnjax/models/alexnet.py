"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in its two common forms.

- `paper=True`: the paper's network on one device: 96-256-384-384-256 filters, conv1 11x11
  stride 4 on 227x227 inputs (the paper's "224" does not divide out; 227 does), local response
  normalization after the ReLUs of conv1 and conv2, overlapping 3x3 stride-2 max-pooling,
  dropout 0.5 on the outputs of fc6 and fc7.
- `paper=False` (default): the 64-192-384-256-256 form without LRN of the "one weird trick" paper
  and torchvision, 61,100,840 parameters at 224x224x3 and 1000 classes, 0.714 GMACs.

`groups=2` gives the paper's two-GPU connectivity (section 3.2, figure 2): conv2, conv4 and
conv5 each read only the maps of their own tower (grouped convolutions), while conv3 and the
dense layers read both. With `paper=True` that is the network of the paper, 60,965,224
parameters at 1000 classes (`alexnet_twotower`). `pool_window` / `pool_stride` switch between
the paper's overlapping 3x3 stride-2 max-pooling (section 3.4) and non-overlapping 2x2 stride 2.

A small AlexNet for CPU studies: `width_multiplier` scales every convolution's filter count
(0.25 with `paper=True`: 24-64-96-96-64), `hidden_units` the dense layers, and `input_size`
zero-pads smaller inputs (as LeNet-5's 28 -> 32) to a size whose maps stay odd at each pooling
point, where 3x3 and 2x2 stride-2 pooling give maps of equal size as in the paper (its
227 = 4 * 55 + 7: 55 -> 27 -> 13 -> 6). 112x112 Fashion-MNIST (upscaled 4x) padded to
131 = 4 * 31 + 7 gives 31 -> 15 -> 7 -> 3 with either pooling; unpadded, 6x6 maps would pool to
2x2 (overlapping) or 3x3 (non-overlapping).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import UserError
from cnnjax.models.layers import ConvBlock, LayerOptions, adaptive_avg_pool, get_activation, pool

# (features, kernel, stride, padding, LRN after it when LRN is on, max-pool after it)
PAPER_LAYERS = (
    (96, 11, 4, 0, True, True),
    (256, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (384, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, True),
)
COMMON_LAYERS = (
    (64, 11, 4, 2, True, True),
    (192, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, True),
)


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


# conv2, conv4 and conv5: the layers that each tower computes from its own maps only.
TOWER_LAYERS = (1, 3, 4)


class AlexNet(nn.Module):
    """AlexNet classifier; `__call__(x [B, H, W, 3], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.5
    paper: bool = False  # the paper's 96-256-384-384-256 net with LRN (see the module docstring)
    lrn: bool | None = None  # override: LRN after conv1/conv2 (default: as `paper`)
    # LRN's alpha. The paper's 1e-4 suits its inputs, mean-subtracted 0-255 pixels; on inputs
    # divided by c (standardized ones), c^2 * 1e-4 normalizes alike, since
    # LRN_alpha(c * a) = c * LRN_{c^2 alpha}(a).
    lrn_alpha: float = 1e-4
    hidden_units: int = 4096
    pool_window: int = 3  # 3 and stride 2: overlapping pooling; 2 and 2: non-overlapping
    pool_stride: int = 2
    groups: int = 1  # 2: the paper's two towers (conv2, conv4, conv5 grouped)
    width_multiplier: float = 1.0  # scales every convolution's filter count (a small AlexNet)
    input_size: int = 0  # > 0: smaller inputs are zero-padded to this size (module docstring)
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        use_lrn = self.paper if self.lrn is None else self.lrn
        options = self.layer_options
        layers = PAPER_LAYERS if self.paper else COMMON_LAYERS
        x = self._padded(x)
        for index, (features, kernel, stride, padding, lrn_here, pool_here) in enumerate(layers):
            x = ConvBlock(
                self._scaled(features),
                kernel,
                stride,
                padding,
                self.activation,
                self.normalization,
                layer_options=options,
                feature_group_count=self.groups if index in TOWER_LAYERS else 1,
            )(x, train=train)
            if lrn_here and use_lrn:
                x = LocalResponseNorm(alpha=self.lrn_alpha)(x)
            if pool_here and min(x.shape[1:3]) >= self.pool_window:
                x = pool(
                    x,
                    "max",
                    window=self.pool_window,
                    stride=self.pool_stride,
                    layer_options=options,
                )
        # [B, 6, 6, C] at the default input size: the identity.
        x = adaptive_avg_pool(x, 6, layer_options=options)
        x = x.reshape(x.shape[0], -1)
        act = get_activation(self.activation)
        for _ in range(2):
            if not self.paper:  # torchvision places dropout before fc6 and fc7
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = act(nn.Dense(self.hidden_units)(x))
            if self.paper:  # the paper drops the outputs of fc6 and fc7
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)

    def _scaled(self, features: int) -> int:
        """`features` times `width_multiplier`, rounded to a multiple of `groups` (at least one
        filter per group), so that the towers still split every grouped layer evenly."""
        if not self.width_multiplier > 0:
            raise UserError(
                f"AlexNet width_multiplier={self.width_multiplier}: use a positive factor "
                "(1.0 is the full net, 0.25 a quarter of its filters)"
            )
        per_group = round(features * self.width_multiplier / self.groups)
        return max(1, per_group) * self.groups

    def _padded(self, x: jax.Array) -> jax.Array:
        """`x` [B, H, W, C] zero-padded (evenly, an odd pixel at the end) to `input_size`."""
        pad_h, pad_w = (max(0, self.input_size - n) for n in x.shape[1:3])
        if not (pad_h or pad_w):
            return x
        halves = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        return jnp.pad(x, (*halves, (0, 0)))

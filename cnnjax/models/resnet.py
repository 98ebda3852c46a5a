"""Residual networks: ImageNet ResNet v1.5, the CIFAR ResNets, and Wide ResNets.

- `ResNet` (He et al. 2016, "v1.5" as in torchvision: the stride of a downsampling bottleneck is
  on its 3x3 convolution): 7x7/2 stem and 3x3/2 max-pool, four stages of 64-128-256-512 (x4 for
  bottlenecks), projection shortcuts where the shape changes, global average pool, dense.
  ResNet-18 has 11,689,512 parameters, ResNet-50 25,557,032 (4.09 GMACs at 224x224).
  `width_per_group` (torchvision's name) sets a bottleneck's inner width (its 1x1 reduce and
  3x3) to features * width_per_group / 64, the output staying features * 4: 128 gives
  torchvision's wide_resnet50_2 (68,883,240 parameters) and wide_resnet101_2 (126,886,696),
  Zagoruyko & Komodakis's widening applied to ImageNet bottleneck ResNets.
- `CifarResNet` (He et al. 2016, section 4.2): 3x3 conv 16, three stages of n basic blocks with
  16-32-64 filters (depth 6n + 2), parameter-free "option A" shortcuts (stride-2 subsampling and
  zero channels) by default; ResNet-20 has 0.27M parameters.
- `WideResNet` (Zagoruyko & Komodakis 2016): pre-activation basic blocks with widths 16k-32k-64k
  (depth 6n + 4), dropout between a block's two convolutions, 1x1 projections where shapes
  change; WRN-28-10 has 36.5M parameters.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import UserError
from cnnjax.models.layers import ConvBlock, LayerOptions, Normalization, get_activation


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (post-activation)."""

    features: int
    strides: int
    activation: str
    normalization: str
    shortcut: str = "projection"  # "projection" (1x1 conv) or "zero_pad" (option A)
    layer_options: LayerOptions = LayerOptions()
    # The branch's last normalization starts with scale 0, so that each block starts as the
    # identity (Goyal et al. 2017; the Flax ImageNet example, torchvision's zero_init_residual).
    zero_init_residual: bool = False
    expansion = 1

    def _conv(
        self,
        features: int,
        kernel: int,
        strides: int,
        padding: int,
        activation: str,
        last: bool = False,
    ):
        return ConvBlock(
            features,
            kernel,
            strides,
            padding,
            activation,
            self.normalization,
            layer_options=self.layer_options,
            zero_norm_scale=last and self.zero_init_residual,
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self._conv(self.features, 3, self.strides, 1, self.activation)(x, train=train)
        y = self._conv(self.features, 3, 1, 1, "identity", last=True)(y, train=train)
        return get_activation(self.activation)(y + self._shortcut(x, train))

    def _shortcut(self, x: jax.Array, train: bool) -> jax.Array:
        features = self.features * self.expansion
        if self.strides == 1 and x.shape[-1] == features:
            return x
        if self.shortcut == "zero_pad":  # option A: no parameters
            x = x[:, :: self.strides, :: self.strides]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
        return self._conv(features, 1, self.strides, 0, "identity")(x, train=train)


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand to features * 4, and a shortcut.

    The reduce and the 3x3 are features * width_per_group / 64 wide (`features` at the default
    64; twice that in the wide ResNets).
    """

    width_per_group: int = 64
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = self.activation
        inner = self.features * self.width_per_group // 64
        y = self._conv(inner, 1, 1, 0, act)(x, train=train)
        y = self._conv(inner, 3, self.strides, 1, act)(y, train=train)
        y = self._conv(self.features * 4, 1, 1, 0, "identity", last=True)(y, train=train)
        return get_activation(act)(y + self._shortcut(x, train))


class ResNet(nn.Module):
    """ImageNet ResNet v1.5: `(x [B, H, W, 3], *, train) -> logits [B, num_classes]`."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    bottleneck: bool = False
    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0
    width: int = 64
    layer_options: LayerOptions = LayerOptions()
    zero_init_residual: bool = False  # each block's last normalization scale starts at 0
    width_per_group: int = 64  # a bottleneck's inner width per 64 of its features (128: wide)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        options = self.layer_options
        x = ConvBlock(
            self.width, 7, 2, 3, self.activation, self.normalization, layer_options=options
        )(x, train=train)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, C]
        if self.bottleneck:
            block = functools.partial(Bottleneck, width_per_group=self.width_per_group)
        elif self.width_per_group != 64:  # as torchvision: a basic block has no inner width
            raise UserError(
                f"width_per_group={self.width_per_group} needs bottleneck blocks: "
                "basic-block ResNets take only 64"
            )
        else:
            block = BasicBlock
        for stage, blocks in enumerate(self.stage_sizes):
            for index in range(blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = block(
                    self.width * 2**stage,
                    strides,
                    self.activation,
                    self.normalization,
                    layer_options=options,
                    zero_init_residual=self.zero_init_residual,
                )(x, train=train)
        x = x.mean(axis=(1, 2))  # global average pool
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2: `(x [B, 32, 32, 3], *, train) -> logits`."""

    depth: int = 20
    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0
    shortcut: str = "zero_pad"  # option A of the paper; "projection" is option B
    layer_options: LayerOptions = LayerOptions()
    zero_init_residual: bool = False  # each block's last normalization scale starts at 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        blocks = (self.depth - 2) // 6
        options = self.layer_options
        x = ConvBlock(16, 3, 1, 1, self.activation, self.normalization, layer_options=options)(
            x, train=train
        )
        for stage, features in enumerate((16, 32, 64)):
            for index in range(blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = BasicBlock(
                    features,
                    strides,
                    self.activation,
                    self.normalization,
                    self.shortcut,
                    layer_options=options,
                    zero_init_residual=self.zero_init_residual,
                )(x, train=train)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class WideBlock(nn.Module):
    """Pre-activation block: norm-act-conv3x3, dropout, norm-act-conv3x3, plus a shortcut."""

    features: int
    strides: int
    activation: str
    normalization: str
    dropout_rate: float
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = get_activation(self.activation)
        norm = functools.partial(
            Normalization, self.normalization, layer_options=self.layer_options
        )
        pre = act(norm()(x, train=train))
        y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(pre)
        y = act(norm()(y, train=train))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(pre)
        return x + y


class WideResNet(nn.Module):
    """WRN-depth-k: `(x [B, 32, 32, 3], *, train) -> logits [B, num_classes]`."""

    depth: int = 28
    widen_factor: int = 10
    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        blocks = (self.depth - 4) // 6
        options = self.layer_options
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False)(x)
        for stage, base in enumerate((16, 32, 64)):
            for index in range(blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = WideBlock(
                    base * self.widen_factor,
                    strides,
                    self.activation,
                    self.normalization,
                    self.dropout_rate,
                    layer_options=options,
                )(x, train=train)
        norm = Normalization(self.normalization, layer_options=options)
        x = get_activation(self.activation)(norm(x, train=train))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))

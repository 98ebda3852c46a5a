"""LeNet-5 (LeCun et al. 1998) as taught in the course, with modern switches.

    input 32x32x1 -> conv 5x5, 6 -> pool 2x2 -> conv 5x5, 16 -> pool 2x2
      -> dense 120 -> dense 84 -> dense num_classes

61,706 parameters for 10 classes. With `c3_table=True`, C3 connects each of its 16 maps to only
the S2 maps of LeCun et al.'s Table I (to break symmetry and save weights): 1,516 parameters in C3
instead of 2,416, 60,806 in all. 28x28 inputs (MNIST, Fashion-MNIST) are zero-padded to 32x32,
as LeCun et al. did, so that the 16x5x5 feature map before the first dense layer is unchanged.

With `locally_connected=True`, C1 and C3 keep their shapes but lose weight sharing: each output
position has its own kernel (`LocallyConnected2D`), so "weight sharing vs not" is one switch:
C1 28*28*(5*5*1*6) + 28*28*6 = 122,304 and C3 10*10*(5*5*6*16) + 10*10*16 = 241,600
parameters instead of 156 and 2,416, 423,038 in all (registered as `lenet5_local`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import UserError
from cnnjax.models.layers import ConvBlock, LayerOptions, Normalization, get_activation, pool
from cnnjax.models.locally_connected import LocallyConnected2D

FEATURE_MAPS = {"C1": 6, "C3": 16}
# LeCun et al. 1998, Table I: the S2 maps (of 6) that each C3 map (of 16) reads.
C3_TABLE = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (4, 5, 0),
    (5, 0, 1),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (3, 4, 5, 0),
    (4, 5, 0, 1),
    (5, 0, 1, 2),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class SparseC3(nn.Module):
    """C3 with the connection table: only connected (input, output) kernels are parameters."""

    table: tuple[tuple[int, ...], ...] = C3_TABLE
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs = jnp.array([i for maps in self.table for i in maps])
        outputs = jnp.array([o for o, maps in enumerate(self.table) for _ in maps])
        k = self.kernel_size
        weights = self.param(
            "kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=1), (len(inputs), k * k)
        )
        kernel = jnp.zeros((k, k, x.shape[-1], len(self.table)), x.dtype)
        kernel = kernel.at[:, :, inputs, outputs].set(weights.T.reshape(k, k, -1))
        bias = self.param("bias", nn.initializers.zeros, (len(self.table),))
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias


class LeNet5(nn.Module):
    """LeNet-5 classifier; `__call__(x [B, H, W, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    activation: str = "relu"
    pooling: str = "max"
    normalization: str = "none"
    dropout_rate: float = 0.0
    input_size: int = 32  # inputs smaller than this are zero-padded to it
    c3_table: bool = False  # the sparse C2 -> C3 connections of the 1998 paper
    locally_connected: bool = False  # C1 and C3 without weight sharing (module docstring)
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pad_h = max(0, self.input_size - x.shape[1])
        pad_w = max(0, self.input_size - x.shape[2])
        if pad_h or pad_w:
            pads = (
                (0, 0),
                (pad_h // 2, pad_h - pad_h // 2),
                (pad_w // 2, pad_w - pad_w // 2),
                (0, 0),
            )
            x = jnp.pad(x, pads)
        if self.c3_table and self.locally_connected:
            raise UserError("c3_table and locally_connected are two C3s: turn one of them off")
        act = get_activation(self.activation)
        options = self.layer_options
        x = self._feature_layer(x, "C1", act, train)  # [B, 28, 28, 6]
        x = pool(x, self.pooling, window=2, stride=2, layer_options=options)  # [B, 14, 14, 6]
        x = self._feature_layer(x, "C3", act, train)  # [B, 10, 10, 16]
        x = pool(x, self.pooling, window=2, stride=2, layer_options=options)  # [B, 5, 5, 16]
        x = x.reshape(x.shape[0], -1)  # [B, 400]
        for features in (120, 84):
            x = nn.Dense(features)(x)
            x = self._normalized(x, act, train)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)

    def _feature_layer(self, x: jax.Array, layer: str, act, train: bool) -> jax.Array:
        """C1 (6 maps) or C3 (16): a 5x5 convolution, locally connected or with C3's table,
        then normalization and activation."""
        features = FEATURE_MAPS[layer]
        if self.locally_connected:
            local = LocallyConnected2D(features, 5, use_bias=self.normalization == "none")
            return self._normalized(local(x), act, train)
        if self.c3_table and layer == "C3":
            return self._normalized(SparseC3()(x), act, train)
        block = ConvBlock(
            features,
            5,
            activation=self.activation,
            normalization=self.normalization,
            layer_options=self.layer_options,
        )
        return block(x, train=train)

    def _normalized(self, x: jax.Array, act, train: bool) -> jax.Array:
        return act(
            Normalization(self.normalization, layer_options=self.layer_options)(x, train=train)
        )

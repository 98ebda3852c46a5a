"""LeNet-5 (LeCun et al. 1998) as taught in the course, with modern switches.

    input 32x32x1 -> conv 5x5, 6 -> pool 2x2 -> conv 5x5, 16 -> pool 2x2
      -> dense 120 -> dense 84 -> dense num_classes

61,706 parameters for 10 classes. With `c3_table=True`, C3 connects each of its 16 maps to only
the S2 maps of LeCun et al.'s Table I (to break symmetry and save weights): 1,516 parameters in C3
instead of 2,416, 60,806 in all. 28x28 inputs (MNIST, Fashion-MNIST) are zero-padded to 32x32,
as LeCun et al. did, so that the 16x5x5 feature map before the first dense layer is unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import ConvBlock, LayerOptions, Normalization, get_activation, pool

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
        act = get_activation(self.activation)
        options = self.layer_options
        block = dict(activation=self.activation, normalization=self.normalization)
        x = ConvBlock(6, 5, **block, layer_options=options)(x, train=train)  # [B, 28, 28, 6]
        x = pool(x, self.pooling, window=2, stride=2, layer_options=options)  # [B, 14, 14, 6]
        if self.c3_table:
            x = SparseC3()(x)
            x = act(Normalization(self.normalization, layer_options=options)(x, train=train))
        else:
            x = ConvBlock(16, 5, **block, layer_options=options)(x, train=train)  # [B, 10, 10, 16]
        x = pool(x, self.pooling, window=2, stride=2, layer_options=options)  # [B, 5, 5, 16]
        x = x.reshape(x.shape[0], -1)  # [B, 400]
        for features in (120, 84):
            x = nn.Dense(features)(x)
            x = act(Normalization(self.normalization, layer_options=options)(x, train=train))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)

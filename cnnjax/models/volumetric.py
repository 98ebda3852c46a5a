"""Convolutions over one and three dimensions: a 1-D net for sequences and C3D for clips.

- `ConvNet1D`: [B, L, C] sequences (e.g. the rows of an image as 28 steps of 28 features):
  three conv(k)-norm-act-pool stages, global average pooling over time, a dense head.
- `C3D` (Tran et al. 2015): [B, T, H, W, C] clips, 3x3x3 convolutions throughout, the first
  pooling 1x2x2 (keeps early temporal information), later ones 2x2x2. `widths` sets the stages:
  the paper's (64, 128, 256, 256, 512, 512, 512, 512) with fc 4096 on 16x112x112 clips, or a
  small net for CPU tasks.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.models.layers import ConvBlock, LayerOptions, get_activation


class ConvNet1D(nn.Module):
    """1-D classifier: `(x [B, L, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0
    widths: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for features in self.widths:
            x = ConvBlock(
                features,
                self.kernel_size,
                1,
                "SAME",
                self.activation,
                self.normalization,
                layer_options=self.layer_options,
            )(x, train=train)
            if x.shape[1] >= 2:
                x = nn.max_pool(x, (2,), strides=(2,))  # [B, L / 2, features]
        x = x.mean(axis=1)  # global average over time
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class C3D(nn.Module):
    """C3D-style classifier: `(x [B, T, H, W, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 101
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.5
    # Convolutions per stage; a pool follows each stage (the paper pairs the last three).
    stages: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
    hidden_units: int = 4096
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for index, stage in enumerate(self.stages):
            for features in stage:
                x = ConvBlock(
                    features,
                    3,
                    1,
                    "SAME",
                    self.activation,
                    self.normalization,
                    layer_options=self.layer_options,
                )(x, train=train)
            window = (1, 2, 2) if index == 0 else (2, 2, 2)
            window = tuple(w if s >= w else 1 for w, s in zip(window, x.shape[1:4], strict=True))
            # Padded ("SAME") pooling: the paper's pool5 pads 7x7 maps to 4x4 (fc6 input 8,192).
            x = nn.max_pool(x, window, strides=window, padding="SAME")
        x = x.reshape(x.shape[0], -1)
        act = get_activation(self.activation)
        if self.hidden_units:
            for _ in range(2):
                x = act(nn.Dense(self.hidden_units)(x))
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)

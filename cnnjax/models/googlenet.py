"""GoogLeNet / Inception v1 (Szegedy et al., "Going deeper with convolutions", 2014).

    input 224x224x3 -> conv 7x7/2, 64 -> max pool 3/2 -> conv 1x1, 64 -> conv 3x3, 192
      -> max pool 3/2 -> inception 3a, 3b -> max pool 3/2 -> inception 4a..4e -> max pool 2/2
      -> inception 5a, 5b -> global average pool -> dropout -> dense num_classes

Built as the common reference implementation (torchvision) builds it, so that its parameter
count and weight layout carry over: every convolution is conv without bias -> normalization
(batch norm by default; the paper predates it and used LRN in the stem instead) -> activation;
max pools round their output size up (PyTorch's ceil_mode: 224 -> 112 -> 56 -> 28 -> 14 -> 7);
the last pool of stage 4 is 2x2/2 (the paper's 3x3/2 gives the same 7x7); and the "5x5" branch
uses a 3x3 kernel, a known quirk of the ported weights (pytorch/vision issue #906). That build
has 6,624,904 parameters without the auxiliary classifiers. `paper_5x5=True` restores the
paper's 5x5 kernel: 16 more weights per (reduce, 5x5) channel pair, 7,005,832 in all.

The classifier dropout defaults to the paper's 0.4 (torchvision uses 0.2; it has no parameters,
so the counts do not depend on it). Recipes set it through `config.model.dropout_rate`.

For torchvision's pretrained weights, two more options: `batch_norm_epsilon=1e-3` (torchvision's
batch norm epsilon; 1e-5 by default, PyTorch's), the epsilon of every normalization layer, the
auxiliary heads' included; and `transform_input=True`, which re-standardizes ImageNet-standardized
inputs to (pixel - 0.5) / 0.5 before the first convolution (`layers.imagenet_to_signed_range`),
the input range of the TensorFlow weights torchvision ported. Neither changes a count.

Auxiliary classifiers: with `aux_logits=True`, the two heads after inception 4a and 4d (average
pool to 4x4, 1x1 conv 128, dense 1024, dropout 0.7, dense num_classes; 6,379,984 more
parameters at 1000 classes) run in training only, and their logits are sown as
`intermediates/aux_logits` (a tuple of two [B, num_classes] arrays). The module still returns
only the main logits, so `model(x, *, train) -> logits` holds for every family; the train step
(cnnjax/train/steps.py) collects the sown logits and adds their loss with the paper's weight 0.3.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import (
    ConvBlock,
    LayerOptions,
    adaptive_avg_pool,
    get_activation,
    imagenet_to_signed_range,
    pool,
)

# Table 1 of the paper, per module: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection).
INCEPTION_3 = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))
INCEPTION_4 = (
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
)
INCEPTION_5 = ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))
AUX_AFTER = (0, 3)  # indices in stage 4 of the modules feeding a head: 4a and 4d
_PLAIN_POOLING = LayerOptions(reshape_pooling=False)


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling of `x` [B, H, W, C] whose output size rounds up, as PyTorch's ceil_mode:
    `layers.pool` with `ceil_mode=True`, always through `reduce_window` (the plain form)."""
    return pool(
        x, "max", window, stride, padding=padding, ceil_mode=True, layer_options=_PLAIN_POOLING
    )


class Inception(nn.Module):
    """The Inception module: four parallel branches concatenated on channels.

    1x1 | 1x1 -> 3x3 | 1x1 -> wide (3x3 or 5x5) | max pool 3x3/1 -> 1x1 projection.
    `filters` is a row of Table 1; every branch keeps the spatial size ('SAME' padding).
    """

    filters: tuple[int, int, int, int, int, int]
    activation: str
    normalization: str
    wide_kernel: int = 3
    layer_options: LayerOptions = LayerOptions()
    batch_norm_epsilon: float = 1e-5  # the normalizations' epsilon (GoogLeNet's)

    def _conv(self, x: jax.Array, features: int, kernel: int, train: bool) -> jax.Array:
        padding = kernel // 2  # keeps H and W (the kernels are odd)
        block = ConvBlock(
            features,
            kernel,
            1,
            padding,
            self.activation,
            self.normalization,
            layer_options=self.layer_options,
            norm_epsilon=self.batch_norm_epsilon,
        )
        return block(x, train=train)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        f1, f3r, f3, f5r, f5, fpool = self.filters
        branches = [
            self._conv(x, f1, 1, train),  # [B, H, W, f1]
            self._conv(self._conv(x, f3r, 1, train), f3, 3, train),  # [B, H, W, f3]
            self._conv(self._conv(x, f5r, 1, train), f5, self.wide_kernel, train),  # [.., f5]
            self._conv(max_pool_ceil(x, 3, 1, padding=1), fpool, 1, train),  # [.., fpool]
        ]
        return jnp.concatenate(branches, axis=-1)  # [B, H, W, f1 + f3 + f5 + fpool]


class AuxClassifier(nn.Module):
    """An auxiliary head: average pool to 4x4, 1x1 conv 128, dense 1024, dropout 0.7, dense.

    The paper pools 5x5/3, which maps its 14x14 grid to 4x4; pooling adaptively to 4x4 (as
    torchvision does) is the same there and keeps the head usable at other input sizes.
    """

    num_classes: int
    activation: str
    normalization: str
    layer_options: LayerOptions = LayerOptions()
    batch_norm_epsilon: float = 1e-5  # the normalization's epsilon (GoogLeNet's)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        options = self.layer_options
        x = adaptive_avg_pool(x, 4, layer_options=options)  # [B, 4, 4, C]
        x = ConvBlock(
            128,
            1,
            1,
            0,
            self.activation,
            self.normalization,
            layer_options=options,
            norm_epsilon=self.batch_norm_epsilon,
        )(x, train=train)
        x = x.reshape(x.shape[0], -1)  # [B, 2048]
        x = get_activation(self.activation)(nn.Dense(1024)(x))  # [B, 1024]
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, num_classes]


class GoogLeNet(nn.Module):
    """GoogLeNet classifier; `__call__(x [B, H, W, 3], *, train) -> logits [B, num_classes]`.

    Any input of at least 32x32 works (the five stride-2 stages take 32 to 1x1).
    """

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.4  # the paper's; torchvision's is 0.2
    aux_logits: bool = False  # the two auxiliary heads, sown as intermediates/aux_logits
    paper_5x5: bool = False  # the paper's 5x5 kernel instead of torchvision's 3x3
    layer_options: LayerOptions = LayerOptions()
    batch_norm_epsilon: float = 1e-5  # every normalization's epsilon; torchvision's is 1e-3
    transform_input: bool = False  # ImageNet-standardized input -> (pixel - 0.5) / 0.5 first

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act, norm, options = self.activation, self.normalization, self.layer_options
        epsilon = self.batch_norm_epsilon
        conv = functools.partial(
            ConvBlock,
            activation=act,
            normalization=norm,
            layer_options=options,
            norm_epsilon=epsilon,
        )
        if self.transform_input:
            x = imagenet_to_signed_range(x)  # [B, H, W, 3]
        x = conv(64, 7, 2, 3)(x, train=train)  # [B, 112, 112, 64] at 224x224
        x = max_pool_ceil(x, 3, 2)  # [B, 56, 56, 64]
        x = conv(64, 1, 1, 0)(x, train=train)
        x = conv(192, 3, 1, 1)(x, train=train)  # [B, 56, 56, 192]
        x = max_pool_ceil(x, 3, 2)  # [B, 28, 28, 192]
        wide = 5 if self.paper_5x5 else 3
        inception = functools.partial(Inception, activation=act, normalization=norm)
        inception = functools.partial(inception, wide_kernel=wide, layer_options=options)
        inception = functools.partial(inception, batch_norm_epsilon=epsilon)
        for filters in INCEPTION_3:
            x = inception(filters)(x, train=train)  # 3b: [B, 28, 28, 480]
        x = max_pool_ceil(x, 3, 2)  # [B, 14, 14, 480]
        # The heads only shape training; at evaluation they are skipped, but they must run at
        # initialization so that their parameters exist whatever `train` init was called with.
        run_heads = self.aux_logits and (train or self.is_initializing())
        for index, filters in enumerate(INCEPTION_4):
            x = inception(filters)(x, train=train)  # 4e: [B, 14, 14, 832]
            if run_heads and index in AUX_AFTER:
                head = AuxClassifier(
                    self.num_classes, act, norm, layer_options=options, batch_norm_epsilon=epsilon
                )
                aux = head(x, train=train)
                if train:
                    self.sow("intermediates", "aux_logits", aux)  # [B, num_classes]
        x = max_pool_ceil(x, 2, 2)  # [B, 7, 7, 832]
        for filters in INCEPTION_5:
            x = inception(filters)(x, train=train)  # 5b: [B, 7, 7, 1024]
        x = x.mean(axis=(1, 2))  # [B, 1024]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, num_classes]

"""Inception v3 (Szegedy et al., "Rethinking the Inception architecture", 2016).

    input 299x299x3 -> conv 3x3/2, 32 -> conv 3x3, 32 -> conv 3x3 same, 64 -> max pool 3/2
      -> conv 1x1, 80 -> conv 3x3, 192 -> max pool 3/2            [35x35x192]
      -> InceptionA x3 (35x35) -> InceptionB (to 17x17x768)
      -> InceptionC x4 (17x17) -> InceptionD (to 8x8x1280) -> InceptionE x2 (8x8x2048)
      -> global average pool -> dropout -> dense num_classes

The factorized modules, with the filter numbers of the common reference implementation
(torchvision, itself a port of Google's TensorFlow model):
- `InceptionA`: a 5x5 branch, and a 5x5 factorized into two stacked 3x3 (section 3.1);
- `InceptionB` / `InceptionD`: grid reductions, stride-2 convolutions beside a stride-2 max pool
  (section 5), so the grid shrinks without a representational bottleneck;
- `InceptionC`: 7x7 factorized into 1x7 then 7x1 (asymmetric factorization, section 3.2);
- `InceptionE`: the coarsest grid's expanded module, whose 1x3 and 3x1 outputs sit side by side.
Every convolution is conv without bias -> normalization -> activation.

Parameters: 23,834,568 without the auxiliary classifier, exactly torchvision's count for
`inception_v3(aux_logits=False)`. torchvision documents 27,161,264 because its pretrained model
keeps the auxiliary head: 1x1 conv 768->128 with batch norm (98,560), 5x5 conv 128->768 with batch
norm (2,459,136) and a dense 768->1000 (769,000), 3,326,696 in all. `aux_logits=True` adds that
head (after the last InceptionC, training only, sown as `intermediates/aux_logits` like
GoogLeNet's), which brings the count to 27,161,264. The train step weights its loss 0.3 (the
GoogLeNet paper's weight; TF-slim's Inception v3 used 0.4). Batch norm uses epsilon 1e-5 by
default (PyTorch's); torchvision's is 1e-3, set with `batch_norm_epsilon=1e-3` (the epsilon of
every normalization layer, the auxiliary head's included), which changes no count. torchvision's
pretrained weights also need `transform_input=True`: ImageNet-standardized inputs re-standardized
to (pixel - 0.5) / 0.5 before the first convolution (`layers.imagenet_to_signed_range`), the
input range of the TensorFlow weights torchvision ported.

The classifier dropout is torchvision's 0.5. Inputs must be at least 75x75 (the grid reductions
take 75 to 1x1), as torchvision requires.
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
    imagenet_to_signed_range,
    pool,
)

Kernel = int | tuple[int, int]


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3/1 average pool with zero padding counted in the mean, as torchvision's branch pools."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


class InceptionBlock(nn.Module):
    """Base of the Inception v3 modules: their activation, normalization, layer options,
    normalization epsilon and conv helper. Subclasses add fields after these: pass them by
    keyword."""

    activation: str
    normalization: str
    layer_options: LayerOptions = LayerOptions()
    batch_norm_epsilon: float = 1e-5  # the normalizations' epsilon (InceptionV3's)

    def conv(
        self, x: jax.Array, features: int, kernel: Kernel, strides: int = 1, *, train: bool
    ) -> jax.Array:
        """Conv -> normalization -> activation of `x` [B, H, W, C].

        Stride 1 keeps the grid ('SAME', also for the 1x7 / 7x1 kernels); stride 2 is a grid
        reduction without padding ('VALID'), as in the reference.
        """
        padding = "SAME" if strides == 1 else "VALID"
        block = ConvBlock(
            features,
            kernel,
            strides,
            padding,
            self.activation,
            self.normalization,
            layer_options=self.layer_options,
            norm_epsilon=self.batch_norm_epsilon,
        )
        return block(x, train=train)


class InceptionA(InceptionBlock):
    """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(self.conv, train=train)
        branch_1x1 = conv(x, 64, 1)
        branch_5x5 = conv(conv(x, 48, 1), 64, 5)
        branch_3x3_double = conv(conv(conv(x, 64, 1), 96, 3), 96, 3)
        branch_pool = conv(avg_pool_3x3(x), self.pool_features, 1)
        branches = [branch_1x1, branch_5x5, branch_3x3_double, branch_pool]
        return jnp.concatenate(branches, axis=-1)  # [B, 35, 35, 224 + pool_features]


class InceptionB(InceptionBlock):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3/2."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(self.conv, train=train)
        branch_3x3 = conv(x, 384, 3, 2)
        branch_3x3_double = conv(conv(conv(x, 64, 1), 96, 3), 96, 3, 2)
        branch_pool = pool(x, "max", 3, 2, layer_options=self.layer_options)
        branches = [branch_3x3, branch_3x3_double, branch_pool]
        return jnp.concatenate(branches, axis=-1)  # [B, 17, 17, 480 + C]: 768 from 288


class InceptionC(InceptionBlock):
    """17x17 module with 7x7 convolutions factorized into 1x7 and 7x1 (`channels_7x7` wide)."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(self.conv, train=train)
        c7 = self.channels_7x7
        # Built in this order so the submodule names stay those of earlier checkpoints.
        branch_7x7 = conv(conv(conv(x, c7, 1), c7, (1, 7)), 192, (7, 1))
        branch_7x7_double = conv(x, c7, 1)
        for features, kernel in ((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
            branch_7x7_double = conv(branch_7x7_double, features, kernel)
        branch_1x1 = conv(x, 192, 1)
        branch_pool = conv(avg_pool_3x3(x), 192, 1)
        branches = [branch_1x1, branch_7x7, branch_7x7_double, branch_pool]
        return jnp.concatenate(branches, axis=-1)  # [B, 17, 17, 768]


class InceptionD(InceptionBlock):
    """17x17 -> 8x8 reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3/2."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(self.conv, train=train)
        branch_7x7 = conv(conv(conv(x, 192, 1), 192, (1, 7)), 192, (7, 1))
        branch_3x3 = conv(conv(x, 192, 1), 320, 3, 2)
        branch_7x7x3 = conv(branch_7x7, 192, 3, 2)
        branch_pool = pool(x, "max", 3, 2, layer_options=self.layer_options)
        branches = [branch_3x3, branch_7x7x3, branch_pool]
        return jnp.concatenate(branches, axis=-1)  # [B, 8, 8, 1280] from 768


class InceptionE(InceptionBlock):
    """8x8 module whose 3x3 branches end in parallel 1x3 and 3x1 convolutions (2048 out)."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(self.conv, train=train)
        three = conv(x, 384, 1)
        double = conv(conv(x, 448, 1), 384, 3)
        branches = [
            conv(x, 320, 1),
            conv(three, 384, (1, 3)),
            conv(three, 384, (3, 1)),
            conv(double, 384, (1, 3)),
            conv(double, 384, (3, 1)),
            conv(avg_pool_3x3(x), 192, 1),
        ]
        return jnp.concatenate(branches, axis=-1)  # [B, 8, 8, 320 + 768 + 768 + 192 = 2048]


class InceptionAux(nn.Module):
    """The auxiliary head on the 17x17 grid: avg pool 5/3, 1x1 conv 128, 5x5 conv 768, dense."""

    num_classes: int
    activation: str
    normalization: str
    layer_options: LayerOptions = LayerOptions()
    batch_norm_epsilon: float = 1e-5  # the normalizations' epsilon (InceptionV3's)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        options = self.layer_options
        if min(x.shape[1:3]) >= 17:
            x = nn.avg_pool(x, (5, 5), strides=(3, 3))  # [B, 5, 5, 768] at 299x299
        else:
            # Inputs below 299 leave a smaller grid; pool it to the 5x5 the 5x5 conv needs.
            x = adaptive_avg_pool(x, 5, layer_options=options)
        act, norm = self.activation, self.normalization
        conv = functools.partial(
            ConvBlock,
            activation=act,
            normalization=norm,
            layer_options=options,
            norm_epsilon=self.batch_norm_epsilon,
        )
        x = conv(128, 1, 1, "VALID")(x, train=train)
        x = conv(768, 5, 1, "VALID")(x, train=train)  # [B, 1, 1, 768] at 299
        x = x.mean(axis=(1, 2))  # [B, 768]
        return nn.Dense(self.num_classes)(x)  # [B, num_classes]


class InceptionV3(nn.Module):
    """Inception v3; `__call__(x [B, H, W, 3], *, train) -> logits [B, num_classes]`, H, W >= 75."""

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.5  # torchvision's
    aux_logits: bool = False  # the auxiliary head, sown as intermediates/aux_logits
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
        for features, strides, padding in ((32, 2, "VALID"), (32, 1, "VALID"), (64, 1, "SAME")):
            x = conv(features, 3, strides, padding)(x, train=train)
        x = pool(x, "max", 3, 2, layer_options=options)  # [B, 73, 73, 64] at 299x299
        x = conv(80, 1, 1, "VALID")(x, train=train)
        x = conv(192, 3, 1, "VALID")(x, train=train)  # [B, 71, 71, 192]
        x = pool(x, "max", 3, 2, layer_options=options)  # [B, 35, 35, 192]
        block = dict(
            activation=act, normalization=norm, layer_options=options, batch_norm_epsilon=epsilon
        )
        for pool_features in (32, 64, 64):
            # [B, 35, 35, 288] at last
            x = InceptionA(**block, pool_features=pool_features)(x, train=train)
        x = InceptionB(**block)(x, train=train)  # [B, 17, 17, 768]
        for channels in (128, 160, 160, 192):
            x = InceptionC(**block, channels_7x7=channels)(x, train=train)
        # As in GoogLeNet: the head runs at initialization (so its parameters exist) and in
        # training, never at evaluation.
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(self.num_classes, **block)(x, train=train)
            if train:
                self.sow("intermediates", "aux_logits", aux)  # [B, num_classes]
        x = InceptionD(**block)(x, train=train)  # [B, 8, 8, 1280]
        x = InceptionE(**block)(x, train=train)
        x = InceptionE(**block)(x, train=train)  # [B, 8, 8, 2048]
        x = x.mean(axis=(1, 2))  # [B, 2048]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, num_classes]

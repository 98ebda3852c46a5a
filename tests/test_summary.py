"""`cnnjax summary`: exact receptive fields, parameter and MAC totals, the printed table.

Everything here is traced (shapes only), never computed, except the brute-force check, which
differentiates a tiny linear network to find which input pixels each output unit really reads.
"""

import functools
import itertools
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

from cnnjax import models
from cnnjax.inspect.receptive_field import AxisField, receptive_field, trace_fields
from cnnjax.inspect.summary import (
    format_summary,
    model_summary,
    summary_from_config,
    summary_totals,
)
from cnnjax.models import layers, lenet
from cnnjax.models.dilated import CONTEXT_DILATIONS, receptive_fields
from cnnjax.models.googlenet import Inception
from cnnjax.models.inventory import count_macs, param_count


class Chain(nn.Module):
    """Applies `steps` in order: a partial of a module class builds that module, anything else
    is a function of x."""

    steps: tuple

    @nn.compact
    def __call__(self, x, *, train):
        for step in self.steps:
            is_module = isinstance(getattr(step, "func", None), type)
            x = step()(x, train=train) if is_module else step(x)
        return x


# The plain forms, which `model_summary` gives models with a `layer_options` field; the test
# modules here have none, so their layers get them directly.
PLAIN = layers.LayerOptions().plain()


def conv(kernel, **options):
    return functools.partial(
        layers.ConvBlock, 4, kernel, activation="identity", layer_options=PLAIN, **options
    )


def fields_by_path(model, input_shape):
    return {row.path: row.receptive_field for row in model_summary(model, input_shape)}


def square(size, jump, start, uniform=True):
    return (AxisField(size, jump, start, uniform),) * 2


@pytest.mark.parametrize(("padding", "start"), [("VALID", 2), ("SAME", 0)])
def test_two_3x3_convolutions_see_5_pixels(padding, start):
    fields = fields_by_path(Chain((conv(3, padding=padding),) * 2), (16, 16, 1))
    assert fields["ConvBlock_0"] == square(3, 1, start // 2)
    assert fields["ConvBlock_1"] == square(5, 1, start)


def test_pooling_between_convolutions_doubles_the_jump():
    pool_2x2 = functools.partial(layers.pool, kind="max", window=2, stride=2, layer_options=PLAIN)
    fields = fields_by_path(Chain((conv(3), pool_2x2, conv(3))), (16, 16, 1))  # 14 = 7 * 2
    # 3 -> pool: 3 + 1 = 4, jump 2 -> conv: 4 + 2 * 2 = 8; first center (0 + 7) / 2.
    assert fields["ConvBlock_1"] == square(8, 2, Fraction(7, 2))
    overlapping = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    fields = fields_by_path(Chain((conv(3), overlapping, conv(3))), (16, 16, 1))
    assert fields["ConvBlock_1"] == square(9, 2, 4)  # 3 + 2 * 1 + 2 * 2


def test_dilation_and_padding_by_hand():
    fields = fields_by_path(Chain((conv(3, dilation=2),)), (16, 16, 1))
    assert fields["ConvBlock_0"] == square(5, 1, 2)
    # Padding 2, stride 2: the first window covers pixels -2..0 (center -1), jump 2; a 3x3 conv
    # after it spans 3 + 2 * 2 = 7 pixels centered at -1 + 2 = 1.
    fields = fields_by_path(Chain((conv(3, strides=2, padding=2), conv(3))), (16, 16, 1))
    assert fields["ConvBlock_0"] == square(3, 2, -1)
    assert fields["ConvBlock_1"] == square(7, 2, 1)


def test_asymmetric_kernels_differ_per_axis_and_print_as_such():
    rows = model_summary(Chain((conv((1, 7), padding="SAME"),)), (9, 9, 1))
    assert rows[1].receptive_field == (AxisField(1, 1, 0), AxisField(7, 1, 0))
    assert "1x7" in format_summary(rows, summary_totals(rows))


def test_lenet5_on_28x28_padded_to_32(monkeypatch):
    counter = itertools.count()

    def marked_pool(x, *args, **kwargs):  # LeNet's pools are functions: mark their outputs
        return checkpoint_name(layers.pool(x, *args, **kwargs), f"pool{next(counter)}")

    monkeypatch.setattr(lenet, "pool", marked_pool)
    model = models.create("lenet5")
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    pools, _ = trace_fields(jaxpr, (1, 2))
    fields = fields_by_path(model, (28, 28, 1))
    # The zero pad of 2 shifts every center 2 pixels left of an unpadded 32x32 input.
    assert fields["ConvBlock_0"] == square(5, 1, 0)
    assert pools["pool0"] == square(6, 2, Fraction(1, 2))
    assert fields["ConvBlock_1"] == square(14, 2, Fraction(9, 2))
    assert pools["pool1"] == square(16, 4, Fraction(11, 2))
    # Dense layers read all of the padded input: pixels -2..29.
    assert fields["Dense_0"] == fields[""] == square(32, 0, Fraction(27, 2))


def test_dilated_context_module_matches_yu_and_koltun():
    fields = fields_by_path(models.create("dilated_context", features=8), (16, 16, 1))
    sizes = [fields[f"ConvBlock_{i + 1}"][0].size for i in range(len(CONTEXT_DILATIONS))]
    # The 3x3 front-end (ConvBlock_0) adds 2 to the module's own 3, 5, 9, ..., 67.
    assert [s - 2 for s in sizes] == receptive_fields(CONTEXT_DILATIONS)
    assert receptive_fields(CONTEXT_DILATIONS)[-1] == 67


def test_residual_blocks_take_the_larger_branch():
    fields = fields_by_path(models.create("resnet20"), (32, 32, 3))
    # Main path: conv 3; stage 1: 6 convs + 2 each = 15; stage 2 (jump 2): 6 convs + 4 = 39
    # (the strided one adds 2 * 1 = 2 and the 1x1 shortcut slice less), stage 3 (jump 4)
    # likewise: 41 + 5 * 8 = 81. Padding 1 keeps every first center at 0.
    assert fields["BasicBlock_2"] == square(15, 1, 0)
    assert fields["BasicBlock_8"] == square(81, 4, 0)
    # Global average over 8x8 units 4 pixels apart: 81 + 7 * 4 pixels, -40..68.
    assert fields[""] == square(109, 0, 14)


class TwoBranches(nn.Module):
    """A 5x5 branch beside a 1x1 one, added or concatenated."""

    concat: bool

    @nn.compact
    def __call__(self, x, *, train):
        wide = conv(5, padding="SAME")()(x, train=train)
        narrow = conv(1)()(x, train=train)
        return jnp.concatenate([narrow, wide], -1) if self.concat else wide + narrow


@pytest.mark.parametrize("concat", [False, True])
def test_added_or_concatenated_branches_take_the_union(concat):
    fields = fields_by_path(TwoBranches(concat), (8, 8, 2))
    assert fields["ConvBlock_1"] == square(1, 1, 0)
    assert fields[""] == square(5, 1, 0)


def test_inception_module_is_its_widest_branch():
    inception = functools.partial(Inception, (2, 2, 2, 2, 2, 2), "relu", "none", 5, PLAIN)
    module = Chain((inception,))
    assert fields_by_path(module, (8, 8, 3))["Inception_0"] == square(5, 1, 0)


def test_one_and_three_spatial_dimensions():
    fields = fields_by_path(models.create("convnet1d"), (28, 28))
    assert fields["ConvBlock_0"] == (AxisField(5, 1, 0),)
    assert fields["ConvBlock_1"] == (AxisField(5 + 1 + 4 * 2, 2, Fraction(1, 2)),)  # pool, conv
    fields = fields_by_path(models.create("c3d_small"), (4, 16, 16, 1))
    assert fields["ConvBlock_0"] == (AxisField(3, 1, 0),) * 3
    # After the 1x2x2 pool, time keeps jump 1 while height and width have jump 2.
    t, h, w = fields["ConvBlock_1"]
    assert (t.size, t.jump, h.size, h.jump) == (5, 1, 8, 2) and h == w


def test_nearest_upsampling_gives_alternating_fields():
    def up(x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        kernel = jnp.ones((2, 2, 1, 1))
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims)

    # Units 2i see pixel i, units 2i + 1 pixels i and i + 1: sizes 1, 2, 1, 2, ...
    assert receptive_field(up, (1, 8, 8, 1)) == square(2, Fraction(1, 2), 0, uniform=False)
    rows = model_summary(models.create("unet_small"), (16, 16, 1))
    assert not rows[0].receptive_field[0].uniform
    assert "<=" in format_summary(rows, summary_totals(rows))


def test_unhandled_operations_give_unknown_not_a_guess():
    assert receptive_field(lambda x: jnp.cumsum(x, axis=1), (1, 8, 8, 1)) == (None, None)
    resize = functools.partial(jax.image.resize, shape=(1, 16, 16, 1), method="nearest")
    assert receptive_field(resize, (1, 8, 8, 1)) == (None, None)
    assert receptive_field(lambda x: x * 2 + x[:, ::-1], (1, 4, 4, 1)) is not None


def _brute_force_spans(fn, shape):
    """Per output row (first column), the span of input rows it reads: `fn` is linear with
    positive weights (no cancellation), so one-hot images show what each unit depends on."""
    _, height, width, _ = shape
    pixels = jnp.eye(height * width).reshape(height * width, height, width, 1)
    outputs = np.asarray(jax.jit(fn)(pixels))[:, :, 0]  # [input pixel, output row, channel]
    outputs = outputs.reshape(height, width, *outputs.shape[1:])
    reads = np.abs(outputs).sum(axis=(1, 3)) > 0  # [input row, output row]
    return [(int(np.flatnonzero(r)[0]), int(np.flatnonzero(r)[-1])) for r in reads.T]


def ones_conv(x, k, stride=1, padding="VALID", dilation=1):
    """A convolution with all-ones 2-channel kernels: linear, positive weights."""
    kernel = jnp.ones((k, k, x.shape[-1], 2))
    strides, dilations, dims = (stride, stride), (dilation, dilation), ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilations, dimension_numbers=dims
    )


def test_fields_match_the_pixels_a_linear_network_reads():
    def net(x):
        x = jnp.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))
        x = ones_conv(x, 3, padding="SAME")
        x = layers.pool(x, "average", 2, 2, layer_options=PLAIN)  # 24 -> 12
        x = x + ones_conv(x, 3, padding="SAME", dilation=2)
        x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = jnp.concatenate(
            [ones_conv(x, 3, stride=2, padding=((2, 0), (2, 0))), x[:, ::2, ::2]], -1
        )
        return ones_conv(x, 2)

    shape = (1, 21, 21, 1)
    field = receptive_field(net, shape)[0]
    # By hand (size, jump, first center): pad (1, 1, -1), conv (3, 1, -1), pool (4, 2, -0.5),
    # dilated branch (4 + 2 * 2 * 2 = 12, 2, -0.5), pool (16, 4, -0.5), strided conv padded
    # 2 in front (24, 8, -4.5) beside the slice (16, 8, -0.5): span -16..7, conv 2: (32, 8, -0.5).
    assert field == AxisField(32, 8, Fraction(-1, 2))
    spans = _brute_force_spans(net, shape)
    for unit, (first, last) in enumerate(spans):
        center = field.start + unit * field.jump
        half = Fraction(field.size - 1, 2)
        assert (first, last) == (max(0, center - half), min(shape[1] - 1, center + half))


def test_upsampled_fields_match_the_pixels_read():
    def unet_like(x):
        skip = ones_conv(x, 3, padding="SAME")  # [B, 24, 24, 2]
        pooled = layers.pool(skip, "average", 2, 2, layer_options=PLAIN)
        x = ones_conv(pooled, 3, padding="SAME")  # 12x12
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # 24x24, nearest
        x = ones_conv(x, 2, padding="SAME")
        return ones_conv(jnp.concatenate([skip, x], -1), 3, padding="SAME")

    field = receptive_field(unet_like, (1, 24, 24, 1))[0]
    spans = _brute_force_spans(unet_like, (1, 24, 24, 1))
    sizes = {last - first + 1 for first, last in spans[8:-8]}  # units away from the borders
    assert not field.uniform and field.jump == 1  # 2 before upsampling
    assert max(sizes) == field.size and len(sizes) == 2  # two sizes, alternating


# Tracing a model three times (summary, param_count, count_macs) takes up to 5 s of CPU for the
# largest: deeper or wider repeats of block structures covered above, and the two Inception nets
# (whose concatenations the Inception-module test covers), run with `-m slow`.
SLOW_TOTALS = {
    *("googlenet", "inception_v3", "resnet32", "resnet34", "resnet44", "resnet56", "resnet101"),
    *("resnet110", "resnet152", "wide_resnet50_2", "wide_resnet101_2"),
    *("wrn28_2", "wrn28_10", "wrn40_4", "vgg11_bn", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn"),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TOTALS else n
        for n in models.list_models()
    ],
)
def test_totals_equal_the_registry(name):
    shape = models.default_input_shape(name)
    totals = summary_totals(model_summary(models.create(name), shape))
    assert totals.params == param_count(name)
    assert totals.macs == count_macs(models.create(name), shape)


def test_batch_statistics_are_counted_apart_and_depth_folds_rows():
    model = models.create("lenet5", normalization="batch")
    rows = model_summary(model, (32, 32, 1))
    folded = model_summary(model, (32, 32, 1), depth=1)
    assert {row.depth for row in folded} == {0, 1} and len(folded) < len(rows)
    # Batch norm after the 2 convs and 2 hidden dense layers: 6 + 16 + 120 + 84 channels,
    # a mean and a variance each; the convs lose their biases to the norm's shift.
    assert summary_totals(folded) == summary_totals(rows)
    assert summary_totals(rows).batch_stats == 2 * (6 + 16 + 120 + 84)
    assert summary_totals(rows).params == param_count("lenet5", normalization="batch")


def test_dense_vs_conv_for_lenet_conv1():
    rows = model_summary(models.create("lenet5"), (32, 32, 1))
    conv1 = next(row for row in rows if row.path == "ConvBlock_0/Conv_0")
    assert (conv1.params, conv1.macs) == (5 * 5 * 6 + 6, 28 * 28 * 6 * 25)
    assert conv1.dense_params == (32 * 32 * 1 + 1) * (28 * 28 * 6) == 4_821_600
    text = format_summary(rows, summary_totals(rows))
    assert "ConvBlock_0/Conv_0: 32x32x1 -> 28x28x6: conv 156, dense 4,821,600 (30,908x)" in text


def test_format_summary_table_and_totals_line():
    rows = model_summary(models.create("lenet5"), (28, 28, 1))
    text = format_summary(rows, summary_totals(rows))
    total = next(line for line in text.splitlines() if line.startswith("Total params"))
    assert "61,706" in total and "416,520" in total
    conv1 = next(line for line in text.splitlines() if line.strip().startswith("Conv_0"))
    assert conv1.split()[2:] == ["28x28x6", "156", "117,600", "5", "1", "0"]
    folded = format_summary(rows, summary_totals(rows), depth=1)
    assert "Normalization_0" in folded and "  Conv_0" not in folded
    assert "conv 2,416" in folded  # the dense-vs-conv section lists every convolution


def test_summary_from_config_reads_the_data_shape(data_dir):
    from configs.lenet5_fashion_mnist import get_config

    config = get_config("smoke")
    config.data.data_dir = data_dir
    text = summary_from_config(config, depth=1)
    assert text.splitlines()[0] == "lenet5 on fashion_mnist inputs 28x28x1, 10 classes"


def test_summary_from_config_falls_back_when_the_data_is_missing(tmp_path):
    from configs.lenet5_fashion_mnist import get_config

    config = get_config()
    config.data.name, config.data.data_dir = "cifar10", str(tmp_path)
    text = summary_from_config(config)
    assert text.splitlines()[0].startswith("lenet5: data not loaded (dataset 'cifar10'")
    assert "default input 32x32x1 and 10 classes" in text.splitlines()[0]

"""The course's hand exercises, computed through the library's own layers.

Every convolution runs through `ConvBlock` (identity activation, no normalization, the kernel set
through `apply`), every pooling through `layers.pool`. Each expected array is derived here again
by plain numpy loops, and a few values are pinned as literals, so that no test can pass by two
wrong computations agreeing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models.layers import ConvBlock, LayerOptions, get_activation, pool

OPTIONS = (LayerOptions(), LayerOptions().plain())  # the fast forms and the plain ones


def _convolve(image, kernels, *, strides=1, padding="VALID", scale=1.0) -> np.ndarray:
    """`image` [H, W] (or [L]) through a ConvBlock whose filters are `kernels` [F, kh, kw]
    ([F, k] in 1-D) times `scale`, bias 0; returns [F, H_out, W_out] ([F, L_out])."""
    kernels = np.asarray(kernels, np.float32)
    size = kernels.shape[1:]
    block = ConvBlock(len(kernels), size, strides, padding, "identity", "none")
    x = jnp.asarray(image, jnp.float32)[None, ..., None]  # [1, H, W, 1]
    kernel = np.moveaxis(kernels * scale, 0, -1)[..., None, :]  # [kh, kw, 1, F]
    params = {"Conv_0": {"kernel": kernel, "bias": np.zeros(len(kernels), np.float32)}}
    out = block.apply({"params": params}, x, train=False)  # [1, H_out, W_out, F]
    return np.moveaxis(np.asarray(out[0]), -1, 0)


def _correlate(image: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """Valid cross-correlation by loops: the course's "slide the filter, multiply, add"."""
    kh, kw = kernel.shape
    rows = (image.shape[0] - kh) // stride + 1
    cols = (image.shape[1] - kw) // stride + 1
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            patch = image[i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[i, j] = (patch * kernel).sum()
    return out


def _max_pool_ceil(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Max pooling by loops where the last window may hang over the edge (and reads only what
    lies inside)."""
    rows = -(-(x.shape[0] - window) // stride) + 1
    cols = -(-(x.shape[1] - window) // stride) + 1
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = x[i * stride : i * stride + window, j * stride : j * stride + window].max()
    return out


# Brandon Rohrer, "How do Convolutional Neural Networks work?": a 9x9 "X" drawn on its inner
# 7x7 (the two diagonals from (1, 1) to (7, 7) are +1; the border and the rest are -1), and
# three 3x3 +1/-1 filters: the "\" diagonal, the small "X" centre, the "/" diagonal.
ROHRER_X = np.array(
    [[1.0 if 1 <= i <= 7 and (i == j or i + j == 8) else -1.0 for j in range(9)] for i in range(9)]
)
BACKSLASH = 2 * np.eye(3) - 1
SMALL_X = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], float)
SLASH = BACKSLASH[:, ::-1]


@pytest.fixture(scope="module")
def rohrer_maps() -> np.ndarray:
    """The three 7x7 feature maps: the mean of the 9 products (the convolution / 9)."""
    return _convolve(ROHRER_X, [BACKSLASH, SMALL_X, SLASH], scale=1 / 9)  # [3, 7, 7]


def test_rohrer_x_feature_maps_are_means_of_products_in_ninths(rohrer_maps):
    """Rohrer's slides "Filtering: the math behind the match": each value is k/9 (1.00, 0.77,
    0.55, 0.33, 0.11, -0.11, ...), 1.00 wherever the filter matches the image exactly."""
    assert rohrer_maps.shape == (3, 7, 7)
    ninths = rohrer_maps * 9
    np.testing.assert_allclose(ninths, np.rint(ninths), atol=1e-5)  # all of them k / 9
    for got, kernel in zip(ninths, (BACKSLASH, SMALL_X, SLASH), strict=True):
        np.testing.assert_allclose(got, _correlate(ROHRER_X, kernel), atol=1e-5)
    backslash, small_x, slash = np.rint(ninths).astype(int)
    # The slide's first row of the "\" map: 0.77 -0.11 0.11 0.33 0.55 -0.11 0.33.
    assert backslash[0].tolist() == [7, -1, 1, 3, 5, -1, 3]
    assert np.diag(backslash).tolist() == [7, 9, 9, 5, 9, 9, 7]  # the X's own diagonal matches
    # The top-left patch holds two +1 pixels of the X: (-1 + 1 + 1) on the filter's diagonal,
    # +6 from the six -1 x -1 products off it: 7/9, printed 0.77 on the slides.
    assert rohrer_maps[0, 0, 0] == pytest.approx(7 / 9, abs=1e-6)
    assert small_x[3, 3] == 9 and small_x[0, 0] == 3  # the centre matches; 0.33 at a corner
    # The image is its own mirror image and "/" is the mirror of "\": so are their maps.
    np.testing.assert_array_equal(slash, backslash[:, ::-1])


def test_rohrer_pooling_keeps_the_edge_windows_with_ceil_mode(rohrer_maps):
    """Rohrer's "Pooling: shrinking the image stack": 2x2 windows, stride 2, the 7x7 map to
    4x4, the last row and column of windows hanging over the edge and holding the edge values
    only (the bottom-right window holds just the corner's 7/9). VALID pooling drops them: 3x3."""
    maps = jnp.asarray(np.moveaxis(rohrer_maps, 0, -1)[None])  # [1, 7, 7, 3]
    for options in OPTIONS:
        ceil = np.asarray(pool(maps, "max", 2, 2, ceil_mode=True, layer_options=options)[0])
        same = np.asarray(pool(maps, "max", 2, 2, padding="SAME", layer_options=options)[0])
        valid = np.asarray(pool(maps, "max", 2, 2, layer_options=options)[0])
        assert ceil.shape == same.shape == (4, 4, 3) and valid.shape == (3, 3, 3)
        np.testing.assert_array_equal(same, ceil)  # SAME pads 7 -> 8 at the end: the same
        np.testing.assert_array_equal(valid, ceil[:3, :3])
        for f in range(3):
            np.testing.assert_allclose(ceil[..., f], _max_pool_ceil(rohrer_maps[f], 2, 2))
    pooled = np.rint(ceil[..., 0] * 9).astype(int)  # the "\" map: slide values x 9
    assert pooled.tolist() == [[9, 3, 5, 3], [3, 9, 3, 5], [5, 3, 9, 1], [3, 5, 1, 7]]
    assert ceil[3, 3, 0] == pytest.approx(7 / 9, abs=1e-6) == rohrer_maps[0, 6, 6]


def test_rohrer_relu_zeroes_the_negatives_and_commutes_with_max_pooling(rohrer_maps):
    """Rohrer's "Rectified Linear Units": every negative value of the maps becomes 0. ReLU and
    max pooling are both monotone, so pooling the rectified maps gives the rectified pools."""
    relu = get_activation("relu")
    maps = jnp.asarray(np.moveaxis(rohrer_maps, 0, -1)[None])  # [1, 7, 7, 3]
    rectified = np.asarray(relu(maps))
    np.testing.assert_array_equal(rectified, np.maximum(np.moveaxis(rohrer_maps, 0, -1)[None], 0))
    assert (rohrer_maps < 0).sum() > 0 and (rectified == 0).sum() == (rohrer_maps <= 0).sum()
    assert rectified[0, 0, 1, 0] == 0.0  # the "\" map's -0.11 next to the corner
    options = LayerOptions()
    pooled_after = pool(relu(maps), "max", 2, 2, ceil_mode=True, layer_options=options)
    pooled_before = relu(pool(maps, "max", 2, 2, ceil_mode=True, layer_options=options))
    np.testing.assert_array_equal(pooled_after, pooled_before)


def test_ufldl_convolved_feature():
    """UFLDL tutorial, "Feature extraction using convolution": the 5x5 binary image and the 3x3
    kernel [[1, 0, 1], [0, 1, 0], [1, 0, 1]] give the 3x3 convolved feature."""
    image = np.array(
        [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
    )
    kernel = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    (feature,) = _convolve(image, [kernel])
    np.testing.assert_array_equal(feature, [[4, 3, 4], [2, 4, 3], [2, 3, 4]])
    np.testing.assert_array_equal(feature, _correlate(image, kernel))


def test_one_dimensional_difference_kernel_with_stride_2():
    """The 1-D example: the kernel [+1, -1] at stride 2 takes the difference of each
    non-overlapping pair: [1, 3, 2, 5, 4, 4, 0, 6] -> [1 - 3, 2 - 5, 4 - 4, 0 - 6]."""
    signal = np.array([1, 3, 2, 5, 4, 4, 0, 6], float)
    (out,) = _convolve(signal, [[1, -1]], strides=2)  # ConvBlock on [B, L, C]
    np.testing.assert_array_equal(out, [-2, -3, 0, -6])
    np.testing.assert_array_equal(out, signal[0::2] - signal[1::2])


def test_vertical_horizontal_and_sobel_edge_filters():
    """Andrew Ng's edge detection: a 6x6 image, 10 on its left half and 0 on its right, through
    the vertical edge filter [[1, 0, -1]] x 3 gives a 4x4 map, 30 down the two middle columns
    (where the windows straddle the edge) and 0 at the sides; the mirrored image (dark to
    light) gives -30. The horizontal filter finds the same edge in the transposed image. Sobel's
    x filter on a step from 0 to 1 responds 1 + 2 + 1 = 4 where its window spans the step."""
    image = np.array([[10] * 3 + [0] * 3] * 6, float)
    vertical = np.array([[1, 0, -1]] * 3, float)
    edges, mirrored = _convolve(image, [vertical, vertical[:, ::-1]])
    assert edges.tolist() == [[0, 30, 30, 0]] * 4
    np.testing.assert_array_equal(mirrored, -edges)
    np.testing.assert_array_equal(edges, _correlate(image, vertical))
    (horizontal,) = _convolve(image.T, [vertical.T])  # [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]
    np.testing.assert_array_equal(horizontal, edges.T)

    step = np.array([[0, 0, 1, 1, 1]] * 5, float)
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    across, along = _convolve(step, [sobel_x, sobel_x.T])
    assert across.tolist() == [[4, 4, 0]] * 3 and along.tolist() == [[0, 0, 0]] * 3


def _output_side(n: int, f: int, p: int, s: int) -> float:
    """The course's (N - F + 2P) / S + 1."""
    return (n - f + 2 * p) / s + 1


@pytest.mark.parametrize(
    "n, f, p, s, expected",
    [
        (32, 5, 2, 1, 32),  # "same" padding (F - 1) / 2 keeps 32x32
        (32, 5, 0, 1, 28),  # LeNet-5's C1
        (227, 11, 0, 4, 55),  # AlexNet's conv1
        (7, 3, 0, 2, 3),  # cs231n's 7x7 input, 3x3 filter, stride 2
        (7, 3, 1, 1, 7),
    ],
)
def test_output_size_formula_through_conv_block(n, f, p, s, expected):
    """Output sides of ConvBlock (shapes only) against (N - F + 2P) / S + 1."""
    assert _output_side(n, f, p, s) == expected
    block = ConvBlock(1, f, s, p, "identity", "none")
    x = jax.ShapeDtypeStruct((1, n, n, 1), jnp.float32)
    out = jax.eval_shape(lambda x: block.init_with_output(jax.random.key(0), x, train=False)[0], x)
    assert out.shape == (1, expected, expected, 1)


def test_a_size_that_does_not_divide_is_floored_or_rounded_up_by_ceil_mode():
    """A 7x7 input, 3x3 filter, stride 3: (7 - 3) / 3 + 1 = 2.33 is no integer, a setting the
    course calls invalid. The library floors it: 2 outputs, and the last input row and column
    are never read. Pooling with `ceil_mode` rounds up instead (3: a last window of one pixel)."""
    assert _output_side(7, 3, 0, 3) == pytest.approx(7 / 3)
    x = jnp.arange(49.0).reshape(1, 7, 7, 1)
    block = ConvBlock(1, 3, 3, 0, "identity", "none")
    params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)}}
    out = block.apply({"params": params}, x, train=False)
    assert out.shape == (1, 2, 2, 1)
    # Window sums of rows/columns 0-2 and 3-5; row and column 6 do not count.
    np.testing.assert_array_equal(
        out[0, :, :, 0], _correlate(np.asarray(x[0, :6, :6, 0]), np.ones((3, 3)), 3)
    )
    options = LayerOptions()
    assert pool(x, "max", 3, 3, layer_options=options).shape == (1, 2, 2, 1)
    ceil = pool(x, "max", 3, 3, ceil_mode=True, layer_options=options)
    assert ceil.shape == (1, 3, 3, 1) and float(ceil[0, 2, 2, 0]) == 48.0  # the corner alone

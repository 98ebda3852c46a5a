"""Attribution maps (cnnjax/inspect/attribution.py) on models whose maps are known by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.errors import UserError
from cnnjax.inspect import activations as act
from cnnjax.inspect import attribution as attr

H, W, C, K = 6, 8, 2, 3


class Linear(nn.Module):
    """logits[k] = sum(w[..., k] * x): no bias, so gradient x input sums to the logit."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        w = self.param("w", nn.initializers.zeros, (*x.shape[1:], K))
        return jnp.einsum("bhwc,hwck->bk", x, w)


class Quadratic(nn.Module):
    """logits[k] = sum(w[..., k] * x^2): a gradient that changes with x (2 w x)."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        w = self.param("w", nn.initializers.zeros, (*x.shape[1:], K))
        return jnp.einsum("bhwc,hwck->bk", x * x, w)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((H, W, C, K)).astype(np.float32)
    images = rng.standard_normal((4, H, W, C)).astype(np.float32)
    classes = np.array([0, 2, 1, 2])
    return Linear(), {"params": {"w": w}}, images, classes


def test_gradient_times_input_sums_to_the_logit_of_a_linear_model(linear):
    model, variables, images, classes = linear
    w = variables["params"]["w"]
    got = np.asarray(attr.gradient_times_input(model, variables, images, classes))
    assert got.shape == (4, H, W)
    expected = np.einsum("bhwc,bhwc->bhw", images, np.moveaxis(w[..., classes], -1, 0))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    logits = np.einsum("bhwc,hwck->bk", images, w)[np.arange(4), classes]
    np.testing.assert_allclose(got.sum(axis=(1, 2)), logits, rtol=1e-5)  # completeness
    # The vanilla map is max_c |w|, and activations.saliency is the same function.
    vanilla = np.abs(np.moveaxis(w[..., classes], -1, 0)).max(axis=-1)
    np.testing.assert_allclose(attr.saliency(model, variables, images, classes), vanilla)
    before = attr._gradient._cache_size()
    np.testing.assert_array_equal(
        act.saliency(model, variables, images, classes),
        attr.saliency(model, variables, images, classes),
    )
    # Compiled once per model and shape: the calls above traced nothing new.
    assert attr._gradient._cache_size() == before


def test_smoothgrad_of_a_linear_model_is_the_vanilla_gradient(linear):
    model, variables, images, classes = linear
    vanilla = np.asarray(attr.input_gradient(model, variables, images, classes))
    key = jax.random.key(0)
    smooth = attr.smooth_gradient(model, variables, images, classes, key, samples=5)
    np.testing.assert_allclose(smooth, vanilla, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        attr.smoothgrad(model, variables, images, classes, key),
        attr.saliency(model, variables, images, classes),
        rtol=1e-6,
    )


def test_smoothgrad_noise_of_a_quadratic_model():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((H, W, C, K)).astype(np.float32)
    images = rng.standard_normal((2, H, W, C)).astype(np.float32)
    model, variables, classes = Quadratic(), {"params": {"w": w}}, np.array([1, 0])
    wk = np.moveaxis(w[..., classes], -1, 0)  # [B, H, W, C]
    key = jax.random.key(3)
    # sigma = 0: the vanilla gradient 2 w x, however many samples.
    zero = attr.smooth_gradient(model, variables, images, classes, key, samples=3, sigma=0.0)
    np.testing.assert_allclose(zero, 2 * wk * images, rtol=1e-5, atol=1e-6)
    # sigma > 0: 2 w (x + mean noise), with the noise of sample i drawn from fold_in(key, i)
    # at std sigma * (max - min) of each image.
    sigma, samples = 0.2, 3
    got = attr.smooth_gradient(model, variables, images, classes, key, samples=samples, sigma=sigma)
    std = sigma * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))[:, None, None, None]
    noise = np.mean(
        [jax.random.normal(jax.random.fold_in(key, i), images.shape) for i in range(samples)], 0
    )
    np.testing.assert_allclose(got, 2 * wk * (images + std * noise), rtol=1e-4, atol=1e-5)
    again = attr.smooth_gradient(
        model, variables, images, classes, key, samples=samples, sigma=sigma
    )
    np.testing.assert_array_equal(got, again)  # the key fixes the map


def test_occlusion_of_a_model_that_ignores_half_the_image(linear, monkeypatch):
    model, variables, images, classes = linear
    w = variables["params"]["w"].copy()
    w[:, : W // 2] = 0.0  # the left half is ignored
    variables = {"params": {"w": w}}
    fill = 0.5
    got = np.asarray(
        attr.occlusion(
            model, variables, images, classes, patch=2, stride=2, fill=fill, score="logit"
        )
    )
    assert got.shape == (4, H, W)
    np.testing.assert_array_equal(got[:, :, : W // 2], 0.0)  # exactly: nothing changed there
    # Patches of 2 x 2 at stride 2 tile the image: each pixel is covered once, and its value is
    # the logit change of its own patch, sum over the patch of w (x - fill).
    contribution = (np.moveaxis(w[..., classes], -1, 0) * (images - fill)).sum(-1)  # [B, H, W]
    expected = contribution.reshape(4, H // 2, 2, W // 2, 2).sum(axis=(2, 4))
    expected = np.repeat(np.repeat(expected, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # Overlapping patches (3 wide at stride 2, the last flush with the edge): the mean change of
    # the patches covering each pixel, counted by hand along a row of width 8: patches start at
    # 0, 2, 4 and 5.
    masks = attr.occlusion_patches((H, W), (3, 3), (2, 2))
    assert masks.shape == (3 * 4, H, W)  # rows start at 0, 2, 3
    np.testing.assert_array_equal(masks.sum(axis=0)[0], [1, 1, 2, 1, 2, 2, 2, 1])
    changes = np.einsum("phw,bhw->bp", masks, contribution)
    expected = np.einsum("bp,phw->bhw", changes, masks) / masks.sum(axis=0)
    got = attr.occlusion(
        model, variables, images, classes, patch=3, stride=2, fill=fill, score="logit"
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # Probabilities: the drop of the softmax probability of the class, patch by patch.
    logits = np.einsum("bhwc,hwck->bk", images, w)
    occluded = logits[:, None, :] - np.einsum(
        "phw,bhwk->bpk", masks, np.einsum("bhwc,hwck->bhwk", images - fill, w)
    )

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    rows = np.arange(4)
    drop = softmax(logits)[rows, classes][:, None] - softmax(occluded)[rows, :, classes]
    expected = np.einsum("bp,phw->bhw", drop, masks) / masks.sum(axis=0)
    got = attr.occlusion(model, variables, images, classes, patch=3, stride=2, fill=fill)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # In batches or one image at a time: the same maps.
    one_by_one = [
        attr.occlusion(
            model, variables, images[b : b + 1], classes[b : b + 1], patch=3, stride=2, fill=fill
        )
        for b in range(4)
    ]
    # (Probabilities near 1 differ in float32's last place, 6e-8, with the batch's reductions.)
    np.testing.assert_allclose(np.concatenate(one_by_one), got, rtol=1e-5, atol=1e-6)
    # 20 occluded images per pass, 5 masks of the 4 images: the 12 masks padded to 3 x 5.
    monkeypatch.setattr(attr, "OCCLUDED_COPIES", 20)
    chunked = attr.occlusion(model, variables, images, classes, patch=3, stride=2, fill=fill)
    np.testing.assert_allclose(chunked, got, rtol=1e-5, atol=1e-6)


def test_default_patch_and_bad_arguments(linear):
    assert attr.default_patch((28, 28)) == ((4, 4), (2, 2))
    assert attr.default_patch((224, 224)) == ((32, 32), (16, 16))
    assert attr.default_patch((16, 32, 32)) == ((16, 5, 5), (16, 2, 2))  # a clip: all frames
    assert attr.default_patch((100,)) == ((14,), (7,))
    masks = attr.occlusion_patches((28, 28), (4, 4), (2, 2))
    assert masks.shape == (13 * 13, 28, 28) and masks.sum(axis=0).min() == 1
    model, variables, images, classes = linear
    with pytest.raises(UserError, match="must fit"):
        attr.occlusion(model, variables, images, classes, patch=H + 1)
    with pytest.raises(UserError, match="probability, logit"):
        attr.occlusion(model, variables, images, classes, score="margin")
    with pytest.raises(UserError, match="samples >= 1"):
        attr.smoothgrad(model, variables, images, classes, jax.random.key(0), samples=0)

"""One encoded image -> one uint8 [size, size, 3] crop: the train and eval transforms.

Both decode only as much of a JPEG as the crop needs: libjpeg can run its inverse DCT at 1/2,
1/4 or 1/8 scale for a fraction of the cost (Pillow's `Image.draft`), so a crop that will be
shrunk by 2x or more is decoded at the largest such scale that still leaves it at least the
output size each way, then resized from there. The crop box is still drawn on the full-size
coordinates, so the augmentation's geometry (and the generator draws behind it) is the same with
and without the reduced decode; the pixels differ slightly (the DCT scaling averages 2x2 to 8x8
blocks where bilinear resizing would weigh them), which is why `draft` is an argument and
`data.jpeg_draft` a config key. Either way the result is a pure function of the bytes and the
generator: the same on every run, thread and process.

Typical ImageNet photos (about 500x375) never allow a reduced decode for 224-pixel outputs (1/2
scale needs a crop of 448 pixels each way); larger ones do: 1.5x less CPU for training crops and
2x for evaluation on 1600x1200 photos (benchmarks/image_decoding.py).

With `draft=False` the evaluation transform is torchvision's (Resize of the shorter side, then
CenterCrop, on an image decoded by Pillow) to the byte: `torchvision_eval_settings` gives the
config that evaluates imported torchvision or timm weights as they were published
(tests/test_torchvision_transform.py compares with torchvision itself).
"""

from __future__ import annotations

import io
import math

import numpy as np
import PIL.Image

from cnnjax.data.color_pca import IMAGENET_PCA, ColorPCA, shift_colors

# Evaluation resizes the shorter side to size / 0.875 (256 for 224) before the center crop: the
# standard ResNet/Inception protocol.
EVAL_CROP_FRACTION = 0.875
# Pillow's filters by config name (data.interpolation), named as torchvision's InterpolationMode
# values. Pillow widens each filter by the downscaling factor (antialiasing); torchvision's Resize
# of a PIL image is this same Pillow call. Some torchvision and most timm weights were evaluated
# with bicubic.
INTERPOLATIONS = {
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
}
# numpy pads seed sequences with zeros ([s, e] seeds like [s, e, 0]), so the per-example
# augmentation seed ends with a stream number that no other seed of the data stage uses
# (pipeline.TrainBatches uses 1 for its batch augmentation).
_AUGMENT_STREAM = 2


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The augmentation generator of the example at `position` in `epoch`'s order."""
    return np.random.default_rng([seed, epoch, position, _AUGMENT_STREAM])


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Inception's crop (left, top, width, height): area fraction in `scale`, log-uniform
    aspect ratio in `ratio`, 10 tries, then the central crop clamped to `ratio`.

    The same sampling as torchvision's RandomResizedCrop.get_params and big_vision's
    inception_crop, so published ImageNet recipes carry over unchanged.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(
    data: bytes,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    draft: bool = True,
    interpolation: str = "bilinear",
    pca_color_std: float = 0.0,
    pca: ColorPCA = IMAGENET_PCA,
) -> np.ndarray:
    """Encoded image -> random-resized crop, resized to size x size with `interpolation` (a key
    of INTERPOLATIONS), random mirror, and with `pca_color_std` > 0 AlexNet's PCA colour offset
    (alphas ~ N(0, pca_color_std), drawn from `rng` after the crop and flip; `pca` defaults to
    Krizhevsky's published ImageNet decomposition, cnnjax/data/color_pca.py): uint8
    [size, size, 3]. `draft`: decode a JPEG at a reduced scale where the crop allows it.
    """
    resample = _resample(interpolation)
    image = PIL.Image.open(io.BytesIO(data))
    width, height = image.size
    left, top, w, h = random_resized_crop_box(width, height, rng, scale, ratio)
    # The smallest decode whose crop still has at least `size` pixels each way.
    needed = (math.ceil(width * size / w), math.ceil(height * size / h))
    image, factor = _decode(image, needed if draft else None)
    box = (left * factor, top * factor, (left + w) * factor, (top + h) * factor)
    pixels = np.asarray(image.resize((size, size), resample, box=box), np.uint8)  # [S, S, 3]
    if flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if pca_color_std:
        pixels = shift_colors(pixels, rng.normal(0.0, pca_color_std, size=3), pca)
    return pixels


def eval_transform(
    data: bytes,
    size: int = 224,
    resize: int = 256,
    draft: bool = True,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Encoded image -> shorter side resized to `resize` with `interpolation` (a key of
    INTERPOLATIONS; aspect kept), central size x size crop: uint8 [size, size, 3]. `draft`:
    decode a JPEG at a reduced scale where the shorter side stays at least `resize`."""
    resized = eval_resized(data, resize, draft=draft, interpolation=interpolation)
    # Rounding the crop offset as torchvision's CenterCrop does.
    top = int(round((resized.shape[0] - size) / 2))
    left = int(round((resized.shape[1] - size) / 2))
    return resized[top : top + size, left : left + size]


def eval_resized(
    data: bytes, resize: int = 256, *, draft: bool = True, interpolation: str = "bilinear"
) -> np.ndarray:
    """Encoded image -> its shorter side resized to `resize`, uint8 [H', W', 3]: what
    `eval_transform` (one centre crop) and multi-crop evaluation (five crops) cut from."""
    resample = _resample(interpolation)
    image = PIL.Image.open(io.BytesIO(data))
    width, height = image.size
    # Truncating the longer side as torchvision's Resize does, so numbers reported with
    # torchvision's evaluation are comparable.
    if width <= height:
        new_size = (resize, int(resize * height / width))
    else:
        new_size = (int(resize * width / height), resize)
    image, factor = _decode(image, new_size if draft else None)
    image = image.resize(new_size, resample, box=(0, 0, width * factor, height * factor))
    return np.asarray(image, np.uint8)


def eval_resize_for(image_size: int, eval_resize: int = 0) -> int:
    """The shorter side that evaluation resizes to before its image_size crop: `eval_resize`
    (config data.eval_resize), or for 0 round(image_size / EVAL_CROP_FRACTION)."""
    return eval_resize or round(image_size / EVAL_CROP_FRACTION)


def torchvision_eval_settings(resize: int, crop: int, interpolation: str = "bilinear") -> dict:
    """Config overrides {key: value} that evaluate like torchvision's classification preset
    Resize(resize) + CenterCrop(crop) with `interpolation` (a weight's `transforms()`; timm's
    crop_pct p is resize = int(crop / p)).

    Evaluation then reproduces the published accuracy of imported weights: e.g. (256, 224) for
    torchvision's ResNet V1 weights, (232, 224) for ResNet-50 V2, (342, 299) for Inception v3.
    data.jpeg_draft is off because the reduced JPEG decode changes pixels (by ~1 level).
    """
    _resample(interpolation)
    if not 0 < crop <= resize:
        raise ValueError(f"crop {crop} must be > 0 and at most resize {resize}")
    return {
        "data.image_size": crop,
        "data.eval_resize": resize,
        "data.interpolation": interpolation,
        "data.jpeg_draft": False,
    }


def _resample(interpolation: str) -> PIL.Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}"
        ) from None


def _decode(
    image: PIL.Image.Image, at_least: tuple[int, int] | None
) -> tuple[PIL.Image.Image, float]:
    """The RGB image, decoded at the smallest JPEG scale keeping `at_least` pixels (None: full
    size), and the factor from full-size coordinates to its own."""
    factor, width = 1.0, image.size[0]
    if at_least is not None:
        drafted = image.draft("RGB", at_least)  # None for other formats: a full decode
        if drafted is not None:
            # (0, 0, width / s, height / s) at scale 1 / s: reduced pixel i covers full-size
            # pixels [i * s, (i + 1) * s), so the factor is 1 / s, not the ratio of the sizes
            # (which are rounded up).
            factor = drafted[1][2] / width
    # ImageNet holds grayscale and CMYK JPEGs, and PNGs may carry alpha or a palette.
    return (image if image.mode == "RGB" else image.convert("RGB")), factor

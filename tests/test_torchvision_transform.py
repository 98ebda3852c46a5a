"""The evaluation transform against torchvision's: imported weights evaluate as published.

tests/fixtures/torchvision_eval_transform.npz holds a few encoded images and torchvision's
Resize + CenterCrop of each (bilinear and bicubic, two sizes), made by
tests/fixtures/make_torchvision_transform_fixture.py; the default suite compares with those, and
where torchvision is installed a test compares with it live. The rest checks that
data.eval_resize and data.interpolation reach the decoded batches and leave the defaults alone.
"""

import io
import os
import pathlib
import re

import numpy as np
import PIL.Image
import pytest
from torchvision_support import import_torchvision

from cnnjax.config_base import get_base_config
from cnnjax.data.config_checks import validate_data_config
from cnnjax.data.imagenet import (
    ImageBatches,
    ImageFolderSource,
    eval_image_batches,
    eval_resize_for,
    eval_transform,
    example_rng,
    imagenet_normalization,
    torchvision_eval_settings,
    train_transform,
)
from cnnjax.data.inputs import StreamingInput
from cnnjax.errors import UserError

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "torchvision_eval_transform.npz"


def stored_crops() -> list[tuple[bytes, int, int, str, np.ndarray]]:
    """(encoded image, resize, crop, interpolation, torchvision's uint8 [crop, crop, 3]) of
    every stored output."""
    stored = np.load(FIXTURE)
    cases = []
    for name in stored.files:
        if match := re.fullmatch(r"output_(\d+)_(\d+)_(\d+)_(\w+)", name):
            index, resize, crop, interpolation = match.groups()
            data = stored[f"input_{index}"].tobytes()
            cases.append((data, int(resize), int(crop), interpolation, stored[name]))
    return cases


def test_eval_transform_gives_torchvisions_stored_crops_exactly():
    cases = stored_crops()
    assert len(cases) == 20  # 5 images x (2 sizes x 2 filters)
    assert {(r, c, i) for _, r, c, i, _ in cases} == {
        (48, 42, "bilinear"),
        (48, 42, "bicubic"),
        (58, 56, "bilinear"),
        (58, 56, "bicubic"),
    }
    for data, resize, crop, interpolation, expected in cases:
        out = eval_transform(data, crop, resize, draft=False, interpolation=interpolation)
        np.testing.assert_array_equal(out, expected)  # to the byte, not within a level
    # The two filters' crops differ, so each case checks its own filter.
    by_setting = {(d, r, c, i): out for d, r, c, i, out in cases}
    for data, resize, crop, _, _ in cases:
        bilinear, bicubic = (by_setting[data, resize, crop, i] for i in ("bilinear", "bicubic"))
        assert not np.array_equal(bilinear, bicubic)


def test_eval_transform_equals_torchvision_live():
    torchvision = import_torchvision()
    if torchvision is None:
        pytest.skip("torchvision is not installed")
    from torchvision import transforms
    from torchvision.transforms import v2
    from torchvision.transforms._presets import ImageClassification  # weights.transforms()

    normalize = imagenet_normalization()
    for data, resize, crop, interpolation, stored in stored_crops():
        image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
        mode = transforms.InterpolationMode(interpolation)
        out = eval_transform(data, crop, resize, draft=False, interpolation=interpolation)
        for module in (transforms, v2):
            crop_of = module.Compose(
                [module.Resize(resize, interpolation=mode), module.CenterCrop(crop)]
            )
            np.testing.assert_array_equal(out, np.asarray(crop_of(image)))
        np.testing.assert_array_equal(out, stored)  # the fixture is still torchvision's
        # What published weights were evaluated with: the same pixels, normalized alike.
        preset = ImageClassification(crop_size=crop, resize_size=resize, interpolation=mode)
        expected = preset(image).numpy().transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
        np.testing.assert_allclose(np.asarray(normalize(out)), expected, atol=2e-6)


def test_settings_of_torchvisions_published_weights():
    # The numbers of torchvision's weight metadata (transforms.keywords), pinned here; where
    # torchvision is installed they are read from it too.
    published = {
        "ResNet50_Weights.IMAGENET1K_V1": (256, 224, "bilinear"),
        "ResNet50_Weights.IMAGENET1K_V2": (232, 224, "bilinear"),
        "Inception_V3_Weights.IMAGENET1K_V1": (342, 299, "bilinear"),
        "EfficientNet_B0_Weights.IMAGENET1K_V1": (256, 224, "bicubic"),
    }
    torchvision = import_torchvision()
    for name, (resize, crop, interpolation) in published.items():
        if torchvision is not None:
            enum, member = name.split(".")
            preset = getattr(getattr(torchvision.models, enum), member).transforms()
            read = (preset.resize_size[0], preset.crop_size[0], preset.interpolation.value)
            assert read == (resize, crop, interpolation), name
        settings = torchvision_eval_settings(resize, crop, interpolation)
        assert settings == {
            "data.image_size": crop,
            "data.eval_resize": resize,
            "data.interpolation": interpolation,
            "data.jpeg_draft": False,
        }
        config = get_base_config()
        config.update_from_flattened_dict({"data.name": "imagenet2012", **settings})
        validate_data_config(config)
    # The ResNet V1 protocol is also the default: image_size / 0.875.
    assert eval_resize_for(224) == 256 and eval_resize_for(299) == 342
    with pytest.raises(ValueError, match="unknown interpolation 'lanczos': choose one of"):
        torchvision_eval_settings(256, 224, "lanczos")
    with pytest.raises(ValueError, match="crop 224 must be > 0 and at most resize 200"):
        torchvision_eval_settings(200, 224)


def smooth_png(width: int, height: int, seed: int) -> bytes:
    """Gradients, a fine checkerboard and noise: bilinear and bicubic resizes differ on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    checker = ((x // 2 + y // 3) % 2) * 90
    pixels = np.stack([x * 160 // width + checker, y * 255 // height, checker * 2], -1)
    pixels = np.clip(pixels + rng.integers(0, 30, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> pathlib.Path:
    """tmp_path/{train,val}/{a,b}/<i>.png: 3 images per class and split, of varied shapes."""
    for split_seed, split in enumerate(("train", "val")):
        for label in ("a", "b"):
            os.makedirs(tmp_path / split / label)
            for i in range(3):
                data = smooth_png(30 + 7 * i, 41 - 5 * i, seed=10 * split_seed + i)
                (tmp_path / split / label / f"{i}.png").write_bytes(data)
    return tmp_path


def test_defaults_are_the_transforms_of_before(image_folder):
    config = get_base_config()
    assert (config.data.eval_resize, config.data.interpolation) == (0, "bilinear")
    assert eval_resize_for(16) == round(16 / 0.875) == 18 and eval_resize_for(16, 20) == 20
    source = ImageFolderSource(str(image_folder / "val"))
    data = source.get(0)[0]
    # Bilinear by default, as before the keys: Pillow's resize of the shorter side (30 x 41 ->
    # 18 x int(18 * 41 / 30) = 18 x 24), then the central 16 x 16 crop (offsets 1 and 4).
    image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
    expected = np.asarray(image.resize((18, 24), PIL.Image.Resampling.BILINEAR))[4:20, 1:17]
    np.testing.assert_array_equal(eval_transform(data, 16, 18), expected)
    batch = next(eval_image_batches(source, batch_size=6, image_size=16, resize=18, workers=1))
    np.testing.assert_array_equal(batch["image"][0], expected)
    plain = ImageBatches(source, batch_size=2, seed=0, image_size=16, train=False, workers=1)
    assert (plain.spec.resize, plain.spec.interpolation) == (18, "bilinear")
    streaming = StreamingInput(_streaming_config(image_folder))
    assert (streaming.eval_resize, streaming.interpolation) == (18, "bilinear")
    np.testing.assert_array_equal(next(streaming.eval_batches())["image"][0], expected)


def _streaming_config(image_folder, **settings):
    config = get_base_config()
    config.update_from_flattened_dict(
        {
            "data.name": "imagefolder",
            "data.image_folder": str(image_folder),
            "data.eval_split": "val",
            "data.image_size": 16,
            "data.batch_size": 2,
            "data.eval_batch_size": 6,
            "data.workers": 2,
            **settings,
        }
    )
    validate_data_config(config)
    return config


@pytest.mark.parametrize("worker_processes", [False, True])
def test_eval_resize_and_interpolation_reach_the_decoded_batches(image_folder, worker_processes):
    bicubic = {"data.eval_resize": 20, "data.interpolation": "bicubic"}
    settings = {"data.worker_processes": worker_processes, **bicubic}
    data = StreamingInput(_streaming_config(image_folder, **settings))
    source = ImageFolderSource(str(image_folder / "val"))
    (batch,) = list(data.eval_batches())
    for index in range(6):
        encoded = source.get(index)[0]
        expected = eval_transform(encoded, 16, 20, interpolation="bicubic")
        np.testing.assert_array_equal(batch["image"][index], expected)
    bilinear = eval_transform(source.get(0)[0], 16, 20)
    assert np.abs(batch["image"][0].astype(int) - bilinear).max() > 5  # the filter took effect
    # ImageBatches' evaluation transform takes them too.
    kwargs = dict(batch_size=2, seed=0, image_size=16, train=False, workers=2)
    kwargs.update(worker_processes=worker_processes)
    plain = ImageBatches(source, eval_resize=20, interpolation="bicubic", **kwargs)
    no_keys = ImageBatches(source, **kwargs)
    first = int(plain.order(0)[0])
    expected = eval_transform(source.get(first)[0], 16, 20, interpolation="bicubic")
    np.testing.assert_array_equal(plain.batch_at(0)["image"][0], expected)
    np.testing.assert_array_equal(
        no_keys.batch_at(0)["image"][0], eval_transform(source.get(first)[0], 16, 18)
    )
    # Training crops take the same filter.
    train = next(data.train_batches(start_step=0))
    order = ImageBatches(data.train_source, batch_size=2, seed=data.seed).order(0)
    encoded = data.train_source.get(int(order[1]))[0]
    expected = train_transform(encoded, example_rng(data.seed, 0, 1), 16, interpolation="bicubic")
    np.testing.assert_array_equal(train["image"][1], expected)
    other = train_transform(encoded, example_rng(data.seed, 0, 1), 16)
    assert not np.array_equal(train["image"][1], other)


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"data.eval_resize": 200},
            "config.data.eval_resize must be 0 (image_size / 0.875) or an integer >= "
            "data.image_size=224 (got 200): set config.data.eval_resize=...",
        ),
        (
            {"data.eval_resize": -1},
            "config.data.eval_resize must be 0 (image_size / 0.875) or an integer >= "
            "data.image_size=224 (got -1): set config.data.eval_resize=...",
        ),
        (
            {"data.interpolation": "nearest"},
            "unknown data.interpolation 'nearest': choose one of bilinear, bicubic",
        ),
    ],
)
def test_bad_eval_settings_are_one_line_with_the_fix(settings, message):
    config = get_base_config()
    config.update_from_flattened_dict(settings)
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        validate_data_config(config)


def test_the_transforms_refuse_unknown_filters():
    data = smooth_png(20, 20, 0)
    with pytest.raises(ValueError, match="^unknown interpolation 'nearest': choose one of"):
        eval_transform(data, 16, 18, interpolation="nearest")
    with pytest.raises(ValueError, match="^unknown interpolation 'area': choose one of"):
        train_transform(data, np.random.default_rng(0), 16, interpolation="area")

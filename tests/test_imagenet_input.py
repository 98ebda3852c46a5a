"""Streaming ImageNet-style input: sources, Inception crop, eval crop, deterministic batches."""

import io
import os
import pathlib

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from cnnjax.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageBatches,
    ImageFolderSource,
    TfdsImageSource,
    eval_image_batches,
    eval_transform,
    example_rng,
    imagenet_normalization,
    random_resized_crop_box,
    train_transform,
)
from cnnjax.errors import UserError

BILINEAR = PIL.Image.Resampling.BILINEAR
MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def smooth_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """An RGB image with structure at every scale (gradients plus noise), so crops differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1)
    pixels = pixels + rng.integers(0, 30, pixels.shape)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: PIL.Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# (class, file name, size, mode): JPEG and PNG in any case, grayscale, RGBA and CMYK among them.
FOLDER = [
    ("ant", "a0.jpg", (40, 30), "RGB"),
    ("ant", "a1.PNG", (25, 50), "RGBA"),
    ("ant", "a2.jpeg", (33, 33), "L"),
    ("ant", "a3.JPG", (64, 48), "CMYK"),
    ("ant", "a4.png", (20, 20), "RGB"),
    ("bee", "b0.png", (50, 40), "RGB"),
    ("bee", "b1.jpg", (41, 29), "RGB"),
    ("bee", "b2.jpg", (30, 60), "L"),
    ("bee", "b3.JPEG", (36, 24), "RGB"),
    ("bee", "b4.png", (28, 28), "P"),
    ("cat", "c0.jpg", (45, 35), "RGB"),
    ("cat", "c1.png", (24, 32), "L"),
    ("cat", "c2.jpg", (60, 45), "RGB"),
    ("cat", "c3.png", (31, 47), "RGB"),
    ("cat", "c4.jpeg", (38, 38), "RGB"),
]


@pytest.fixture
def image_folder(tmp_path) -> str:
    for seed, (label, name, size, mode) in enumerate(FOLDER):
        (tmp_path / label).mkdir(exist_ok=True)
        fmt = "PNG" if name.lower().endswith(".png") else "JPEG"
        smooth_image(*size, seed).convert(mode).save(tmp_path / label / name, fmt)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".thumbnails").mkdir()  # hidden folders are not classes
    return str(tmp_path)


class ValueSource:
    """`n` tiny PNGs; example i is filled with the value i and labelled i."""

    def __init__(self, n: int):
        self.n, self.num_classes, self.class_names = n, n, tuple(str(i) for i in range(n))

    def __len__(self) -> int:
        return self.n

    def get(self, index: int) -> tuple[bytes, int]:
        return encode(PIL.Image.new("RGB", (12, 9), (index,) * 3)), index


def normalized(pixels: np.ndarray) -> np.ndarray:
    return (pixels / 255.0 - MEAN) / STD


def test_image_folder_lists_classes_files_and_labels(image_folder):
    source = ImageFolderSource(image_folder)
    assert source.class_names == ("ant", "bee", "cat") and source.num_classes == 3
    assert len(source) == 15
    names = [os.path.basename(p) for p in source.paths]
    # Sorted by name within each class, extensions in any case, .txt skipped.
    assert names[:5] == ["a0.jpg", "a1.PNG", "a2.jpeg", "a3.JPG", "a4.png"]
    np.testing.assert_array_equal(source.labels, [0] * 5 + [1] * 5 + [2] * 5)
    data, label = source.get(7)
    assert label == 1 and data == pathlib.Path(source.paths[7]).read_bytes()
    assert PIL.Image.open(io.BytesIO(data)).format in ("JPEG", "PNG")


def test_image_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="does not exist: pass a folder of class folders"):
        ImageFolderSource(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="has no class folders: put each class's images in"):
        ImageFolderSource(str(tmp_path))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.md").write_text("")
    with pytest.raises(UserError, match="hold no .jpg, .jpeg or .png images"):
        ImageFolderSource(str(tmp_path))


def test_crop_boxes_follow_the_inception_definition():
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_crop_box(500, 375, rng) for _ in range(2000)])
    left, top, w, h = boxes.T
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= 500).all() and (top + h <= 375).all()
    area, aspect = w * h / (500 * 375), w / h
    assert area.min() > 0.07 and area.max() <= 1.0  # 0.08 up to rounding of w and h
    assert aspect.min() > 0.74 and aspect.max() < 1.35
    # Area uniform in [0.08, 1] (median 0.54) less the large, elongated draws that do not fit.
    assert 0.38 < np.median(area) < 0.50
    # No draw fits a 1000x10 strip at scale >= 0.9: central crop clamped to 4/3 (w = 13).
    assert random_resized_crop_box(1000, 10, rng, scale=(0.9, 1.0)) == (493, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, rng, scale=(0.9, 1.0)) == (0, 493, 10, 13)


def test_train_transform_full_crop_is_a_plain_resize():
    image = smooth_image(48, 48)
    out = train_transform(encode(image), np.random.default_rng(0), 16, (1, 1), (1, 1), flip=False)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(image.resize((16, 16), BILINEAR)))


def test_train_transform_converts_modes_and_is_deterministic():
    for mode in ("L", "RGBA", "CMYK", "P"):
        data = encode(smooth_image(40, 30).convert(mode), "JPEG" if mode == "CMYK" else "PNG")
        out = train_transform(data, np.random.default_rng(1), size=24)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    data = encode(smooth_image(64, 48), "JPEG")
    first = train_transform(data, np.random.default_rng(5), size=24)
    np.testing.assert_array_equal(first, train_transform(data, np.random.default_rng(5), size=24))
    assert not np.array_equal(first, train_transform(data, np.random.default_rng(6), size=24))


def test_train_transform_flips_about_half_the_time():
    pixels = np.zeros((20, 20, 3), np.uint8)
    pixels[:, 10:] = 255  # black left, white right: a flip puts white on the left
    data, rng = encode(PIL.Image.fromarray(pixels)), np.random.default_rng(0)
    flipped = [train_transform(data, rng, 8, (1, 1), (1, 1))[:, 0].mean() > 128 for _ in range(400)]
    assert 170 <= sum(flipped) <= 230  # 200 +- 3 standard deviations
    no_flip = [train_transform(data, rng, 8, (1, 1), (1, 1), flip=False) for _ in range(20)]
    assert all(out[:, 0].mean() < 128 for out in no_flip)


def test_jpeg_draft_decoding_keeps_the_crop_in_place():
    image = smooth_image(512, 512, seed=3)
    data = encode(image, "JPEG")
    out = train_transform(data, np.random.default_rng(2), 64, (0.25, 0.25), (1, 1), flip=False)
    left, top, w, h = random_resized_crop_box(
        512, 512, np.random.default_rng(2), (0.25,) * 2, (1, 1)
    )
    full = PIL.Image.open(io.BytesIO(data)).convert("RGB")  # decoded at full size
    reference = np.asarray(full.resize((64, 64), BILINEAR, box=(left, top, left + w, top + h)))
    # The JPEG was decoded at 1/4 scale (the 256-pixel crop has 64 pixels then), so the result
    # is close to, but not exactly, the full-size one; the crop moved by 8 pixels is much further.
    error = np.abs(out.astype(int) - reference).mean()
    assert 0.5 < error < 3.0
    box = (left + 8, top, left + w + 8, top + h)
    shifted = np.asarray(full.resize((64, 64), BILINEAR, box=box))
    assert np.abs(out.astype(int) - shifted).mean() > 2 * error


def test_eval_transform_resizes_the_shorter_side_then_center_crops():
    # (width, height) -> resized size and crop box, by hand: the shorter side goes to 256, the
    # longer to int(256 * long / short), and the crop starts at round((resized - 224) / 2).
    cases = {
        (300, 400): ((256, 341), (16, 58)),  # 341 = int(341.33); round(58.5) = 58
        (400, 300): ((341, 256), (58, 16)),
        (300, 398): ((256, 339), (16, 58)),  # 339 = int(339.63); round(57.5) = 58
    }
    for size, (resized, (left, top)) in cases.items():
        image = smooth_image(*size)
        out = eval_transform(encode(image), size=224, resize=256)
        expected = image.resize(resized, BILINEAR).crop((left, top, left + 224, top + 224))
        assert out.shape == (224, 224, 3)
        np.testing.assert_array_equal(out, np.asarray(expected))


def test_batches_are_transforms_of_the_source(image_folder):
    source = ImageFolderSource(image_folder)
    batches = ImageBatches(source, batch_size=4, seed=3, image_size=16, workers=2)
    assert batches.steps_per_epoch == 3
    batch = batches.batch_at(4)  # epoch 1, positions 4..7
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    indices = batches.order(1)[4:8]
    np.testing.assert_array_equal(batch["label"], source.labels[indices])
    data, _ = source.get(int(indices[2]))
    pixels = train_transform(data, example_rng(3, 1, 6), size=16)
    np.testing.assert_array_equal(batch["image"][2], pixels)  # normalized on the device
    np.testing.assert_allclose(
        imagenet_normalization()(batch["image"][2]), normalized(pixels), atol=1e-5
    )
    plain = ImageBatches(source, batch_size=4, seed=3, image_size=16, train=False, workers=1)
    expected = eval_transform(source.get(int(indices[0]))[0], 16, resize=18)
    np.testing.assert_array_equal(plain.batch_at(4)["image"][0], expected)
    # Rows of the batch (on many hosts, a process's own) decode only those examples.
    half = ImageBatches(source, batch_size=4, seed=3, image_size=16, workers=2, rows=slice(2, 4))
    np.testing.assert_array_equal(half.batch_at(4)["image"], batch["image"][2:])
    np.testing.assert_array_equal(half.batch_at(4)["label"], batch["label"][2:])


def test_batches_do_not_depend_on_workers_processes_or_the_start_step(image_folder):
    source = ImageFolderSource(image_folder)
    kwargs = dict(batch_size=4, seed=7, image_size=16, pca_color_std=0.1)  # all augmentations
    one, four = ImageBatches(source, workers=1, **kwargs), ImageBatches(source, workers=4, **kwargs)
    iterator = iter(ImageBatches(source, workers=3, prefetch=2, start_step=5, **kwargs))
    processes = ImageBatches(source, workers=2, worker_processes=True, start_step=5, **kwargs)
    in_processes = iter(processes)
    for step in range(5, 12):  # crosses two epoch boundaries (3 steps per epoch)
        expected = one.batch_at(step)
        for batch in (four.batch_at(step), next(iterator), next(in_processes)):
            np.testing.assert_array_equal(batch["image"], expected["image"])
            np.testing.assert_array_equal(batch["label"], expected["label"])
    other_seed = ImageBatches(source, workers=1, batch_size=4, seed=8, image_size=16)
    assert not np.array_equal(other_seed.batch_at(5)["image"], one.batch_at(5)["image"])


def test_each_epoch_visits_every_example_once_in_a_new_order():
    source = ValueSource(12)
    batches = ImageBatches(source, batch_size=4, seed=0, image_size=4, workers=2, prefetch=1)
    stream = iter(batches)
    epochs = [np.concatenate([next(stream)["label"] for _ in range(3)]) for _ in range(3)]
    for labels in epochs:
        np.testing.assert_array_equal(np.sort(labels), np.arange(12))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # The pixels are the example's value, so images and labels stay paired.
    first = batches.batch_at(0)
    np.testing.assert_array_equal(first["image"][:, 2, 2], first["label"][:, None].repeat(3, 1))


def test_the_remainder_of_an_epoch_is_dropped():
    batches = ImageBatches(ValueSource(14), batch_size=4, seed=1, image_size=4, workers=1)
    assert batches.steps_per_epoch == 3
    labels = np.concatenate([batches.batch_at(step)["label"] for step in range(3)])
    assert len(set(labels.tolist())) == 12
    np.testing.assert_array_equal(labels, batches.order(0)[:12])
    with pytest.raises(UserError, match="batch size 15 does not fit 14 examples"):
        ImageBatches(ValueSource(14), batch_size=15, seed=0)


def test_unreadable_images_fail_with_the_example_index():
    class Broken(ValueSource):
        def get(self, index):
            return (b"not an image" if index == 2 else super().get(index)[0]), index

    batches = ImageBatches(Broken(4), batch_size=4, seed=0, image_size=4, workers=2)
    with pytest.raises(UserError, match="example 2 is not a readable image"):
        next(iter(batches))


def test_eval_batches_cover_every_example_once_with_a_mask(image_folder):
    source = ImageFolderSource(image_folder)
    batches = list(eval_image_batches(source, batch_size=4, image_size=16, resize=18, workers=2))
    assert len(batches) == 4 and all(b["image"].shape == (4, 16, 16, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == len(source) == 15
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 1, 0])
    assert not batches[-1]["image"][3].any() and batches[-1]["label"][3] == 0
    labels = np.concatenate([b["label"] for b in batches])[:15]
    np.testing.assert_array_equal(labels, source.labels)
    np.testing.assert_array_equal(batches[3]["image"][1], eval_transform(source.get(13)[0], 16, 18))
    # The last two rows of each batch padded to 6 (e.g. on 3 devices), as one process makes them.
    tail = list(
        eval_image_batches(source, batch_size=4, image_size=16, resize=18, rows=slice(2, 6))
    )
    for part, batch in zip(tail, batches, strict=True):
        np.testing.assert_array_equal(part["image"][:2], batch["image"][2:])
        np.testing.assert_array_equal(part["mask"], np.concatenate([batch["mask"][2:], [0, 0]]))
    assert not np.concatenate([part["image"][2:] for part in tail]).any()
    # Worker processes give the same batches, padding and masks, whole or in parts (rows 4-5 of
    # a global batch of 4 are all padding: that process decodes nothing).
    common = dict(batch_size=4, image_size=16, resize=18, workers=2, worker_processes=True)
    for rows, expected in ((None, batches), (slice(2, 6), tail)):
        got = list(eval_image_batches(source, rows=rows, **common))
        for batch, reference in zip(got, expected, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(batch[key], reference[key])
    padding = list(eval_image_batches(source, rows=slice(4, 6), **common))
    assert len(padding) == 4 and not any(b["mask"].any() or b["image"].any() for b in padding)


WNIDS = ("n01440764", "n02102040", "n02979186")  # the first three Imagenette classes


def prepare_tiny_imagenette(data_dir, image_dir) -> dict[bytes, str]:
    """Prepares 'imagenette' from 6 local JPEGs, without TensorFlow; returns bytes -> wnid."""
    files = {}
    for i in range(6):
        data = encode(smooth_image(30 + i, 20 + 2 * i, seed=i), "JPEG")
        path = os.path.join(image_dir, f"{i}.JPEG")
        with open(path, "wb") as f:
            f.write(data)
        files[path] = WNIDS[i % 3]

    class LocalImagenette(tfds.builder_cls("imagenette"), skip_registration=True):
        name = "imagenette"

        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator(name=s) for s in ("train", "validation")]

        def _generate_examples(self):
            for path, wnid in files.items():
                yield os.path.basename(path), {"image": path, "label": wnid}

    LocalImagenette(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return {pathlib.Path(path).read_bytes(): wnid for path, wnid in files.items()}


def test_tfds_source_returns_the_stored_jpeg_bytes(tmp_path):
    stored = prepare_tiny_imagenette(tmp_path / "tfds", tmp_path)
    source = TfdsImageSource("imagenette", "train", data_dir=str(tmp_path / "tfds"))
    assert len(source) == 6 and source.num_classes == 10 and source.class_names[:3] == WNIDS
    for index in range(len(source)):
        data, label = source.get(index)
        assert isinstance(data, bytes) and stored[data] == WNIDS[label]  # not re-encoded
        assert PIL.Image.open(io.BytesIO(data)).format == "JPEG"
    batch = ImageBatches(source, batch_size=3, seed=0, image_size=8, workers=2).batch_at(1)
    assert batch["image"].shape == (3, 8, 8, 3) and set(batch["label"]) <= {0, 1, 2}
    subset = TfdsImageSource("imagenette", "validation[:2]", data_dir=str(tmp_path / "tfds"))
    assert len(subset) == 2
    with pytest.raises(UserError, match="split 'test' of 'imagenette' is not valid"):
        TfdsImageSource("imagenette", "test", data_dir=str(tmp_path / "tfds"))


def test_tfds_source_says_how_to_prepare_a_missing_dataset(tmp_path):
    with pytest.raises(UserError, match="'imagenette' is not prepared in .*: pass download=True"):
        TfdsImageSource("imagenette", "train", data_dir=str(tmp_path))
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    with pytest.raises(UserError, match=f"ILSVRC2012_img_train.tar .* in {manual} and pass"):
        TfdsImageSource("imagenet2012", "validation", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="cannot prepare 'imagenet2012': Manual directory"):
        TfdsImageSource("imagenet2012", "validation", data_dir=str(tmp_path), download=True)
    with pytest.raises(UserError, match="'imdb_reviews' is not an image classification dataset"):
        TfdsImageSource("imdb_reviews", "train", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="unknown TFDS dataset 'imagenet9' .*: use a name from"):
        TfdsImageSource("imagenet9", "train", data_dir=str(tmp_path))


def test_tfds_mock_data_source():
    # With a decoder given (SkipDecoding), mock_data PNG-encodes its fake images with
    # tf.image.encode_png, so this runs only where TensorFlow is installed (the '[tf]' extra);
    # the test above covers the same path on a dataset prepared without TensorFlow.
    pytest.importorskip("tensorflow", reason="tfds.testing.mock_data needs TensorFlow to encode")
    with tfds.testing.mock_data(num_examples=7):
        source = TfdsImageSource("imagenette", "train", data_dir="/nonexistent")
        assert len(source) == 7 and source.num_classes == 10
        for index in range(len(source)):
            data, label = source.get(index)
            assert PIL.Image.open(io.BytesIO(data)).convert("RGB").size[0] > 0
            assert 0 <= label < 10

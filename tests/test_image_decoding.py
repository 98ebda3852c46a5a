"""Per-image decoding: reduced JPEG decodes (draft) against full ones, and worker processes that
give the same bytes as one process."""

import io

import numpy as np
import PIL.Image
import pytest

from cnnjax.data.decode_workers import DecodeProcesses, DecodeSpec, decode_example
from cnnjax.data.image_decoding import (
    eval_transform,
    example_rng,
    random_resized_crop_box,
    train_transform,
)
from cnnjax.errors import UserError

BILINEAR = PIL.Image.Resampling.BILINEAR


def photo(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """Smooth random content plus noise, like a photo: what the reduced decode is meant for."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(PIL.Image.fromarray(coarse).resize((width, height), BILINEAR), np.int16)
    noise = rng.integers(-8, 9, smooth.shape)
    return PIL.Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def jpeg(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def full_decode(data: bytes) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(data)).convert("RGB")


def test_train_crops_decoded_reduced_stay_close_to_full_decodes():
    data = jpeg(photo(640, 480))
    errors = []
    for seed in range(12):
        # Scale (0.5, 1) and size 48: every crop is at least 2x the output, so it drafts.
        kwargs = dict(size=48, scale=(0.5, 1.0), flip=False)
        out = train_transform(data, np.random.default_rng(seed), **kwargs)
        full = train_transform(data, np.random.default_rng(seed), draft=False, **kwargs)
        left, top, w, h = random_resized_crop_box(640, 480, np.random.default_rng(seed), (0.5, 1))
        box = (left, top, left + w, top + h)
        # Without draft: exactly Pillow's full decode, cropped and resized.
        reference = full_decode(data).resize((48, 48), BILINEAR, box=box)
        np.testing.assert_array_equal(full, np.asarray(reference))
        errors.append(np.abs(out.astype(int) - full).mean())
    # DCT scaling box-averages where bilinear weighs: close, not equal (a crop moved by a few
    # pixels differs by several times more, tests/test_imagenet_input.py).
    assert 0.3 < np.mean(errors) < 1.5  # measured 1.0 (max abs pixel error 11)


def test_reduced_decoding_is_deterministic_and_draws_the_same_numbers():
    data = jpeg(photo(640, 480, seed=1))
    for seed in range(4):
        rngs = [example_rng(seed, 2, 7) for _ in range(3)]
        first = train_transform(data, rngs[0], size=40)
        np.testing.assert_array_equal(first, train_transform(data, rngs[1], size=40))
        train_transform(data, rngs[2], size=40, draft=False)
        # The same draws with and without draft: the crop and flip are the same.
        assert rngs[0].random() == rngs[1].random() == rngs[2].random()


def test_eval_decodes_at_the_largest_scale_keeping_the_shorter_side():
    image = photo(1024, 768, seed=2)
    data = jpeg(image)
    # Shorter side 768 -> 64: 1/8 scale (96 pixels) still covers it.
    out = eval_transform(data, size=56, resize=64)
    full = eval_transform(data, size=56, resize=64, draft=False)
    expected = full_decode(data).resize((85, 64), BILINEAR).crop((14, 4, 70, 60))
    np.testing.assert_array_equal(full, np.asarray(expected))
    error = np.abs(out.astype(int) - full)
    assert 0.3 < error.mean() < 1.5 and error.max() < 16  # measured 0.8 and 6
    np.testing.assert_array_equal(out, eval_transform(data, size=56, resize=64))


def test_formats_without_dct_scaling_decode_in_full():
    png = io.BytesIO()
    photo(320, 240, seed=3).save(png, "PNG")
    data = png.getvalue()
    for draft in (True, False):
        out = train_transform(data, np.random.default_rng(0), size=32, draft=draft)
        np.testing.assert_array_equal(out, train_transform(data, np.random.default_rng(0), 32))
        np.testing.assert_array_equal(
            eval_transform(data, 32, 40, draft), eval_transform(data, 32, 40)
        )


class JpegSource:
    """`n` small photos of different sizes; example i is labelled 10 + i; one unreadable."""

    def __init__(self, n: int, broken: int | None = None):
        self.images = [jpeg(photo(96 + 8 * (i % 5), 72 + 8 * (i % 3), seed=i)) for i in range(n)]
        if broken is not None:
            self.images[broken] = b"not an image"
        self.num_classes, self.class_names = n + 10, tuple(map(str, range(n + 10)))

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int) -> tuple[bytes, int]:
        return self.images[index], 10 + index


def test_worker_processes_give_the_same_bytes_as_one_process():
    source = JpegSource(10)
    jobs = [(index, 3, 20 + row) for row, index in enumerate([4, 0, 9, 2, 7, 7, 1])]
    spec = DecodeSpec(image_size=24, seed=5)
    expected = [decode_example(source, spec, job) for job in jobs]
    results = []
    for processes in (1, 2):
        pool = DecodeProcesses(source, spec, processes=processes, rows=8)
        try:
            # Two batches in flight, collected in order; the second reuses no buffer early.
            pending = [pool.submit(jobs), pool.submit(jobs[:3])]
            results.append([pool.collect(p) for p in pending])
        finally:
            pool.close()
    for (images, labels), (short_images, short_labels) in results:
        assert images.dtype == np.uint8 and images.shape == (7, 24, 24, 3)
        np.testing.assert_array_equal(images, np.stack([pixels for pixels, _ in expected]))
        np.testing.assert_array_equal(labels, [label for _, label in expected])
        np.testing.assert_array_equal(short_images, images[:3])
        np.testing.assert_array_equal(short_labels, labels[:3])
    # Rows 4 and 5 are the same example at other positions: other crops.
    assert not np.array_equal(results[0][0][0][4], results[0][0][0][5])


def test_worker_processes_evaluate_and_report_unreadable_images():
    source = JpegSource(5, broken=3)
    spec = DecodeSpec(image_size=16, train=False, resize=20)
    pool = DecodeProcesses(source, spec, processes=2, rows=4)
    try:
        images, labels = pool.collect(pool.submit([(0, 0, 0), (4, 0, 0)]))
        np.testing.assert_array_equal(images[1], eval_transform(source.get(4)[0], 16, 20))
        np.testing.assert_array_equal(labels, [10, 14])
        with pytest.raises(UserError, match="example 3 is not a readable image"):
            pool.collect(pool.submit([(1, 0, 0), (3, 0, 0)]))
        with pytest.raises(ValueError, match="5 jobs for buffers of 4 rows"):
            pool.submit([(0, 0, 0)] * 5)
    finally:
        pool.close()
    with pytest.raises(UserError, match="processes=0: use at least 1"):
        DecodeProcesses(source, spec, processes=0, rows=4)

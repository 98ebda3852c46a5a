"""Images/s of the input pipeline alone on the real Fashion-MNIST training split.

    .venv/bin/python benchmarks/input_pipeline.py [--batch_size=128] [--windows=5]

Prints the median over timed windows, with and without augmentation (crop + flip), after one
warm-up window, for the prefetching iterator the trainer uses.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from cnnjax.data import AugmentConfig, TrainBatches, channel_stats, load_split

_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per batch.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows; the median is reported.")
_STEPS = flags.DEFINE_integer("steps_per_window", 100, "Batches per window.")


def main(argv):
    del argv
    start = time.perf_counter()
    split = load_split("fashion_mnist", "train")
    print(f"read the train split into memory in {time.perf_counter() - start:.1f} s")
    mean, std = channel_stats(split.images)
    settings = {
        "normalize only": AugmentConfig(),
        "flip": AugmentConfig(horizontal_flip=True),
        "crop 2 + flip": AugmentConfig(random_crop_padding=2, horizontal_flip=True),
    }
    for name, augment in settings.items():
        iterator = iter(
            TrainBatches(
                split, batch_size=_BATCH.value, seed=0, augment=augment, mean=mean, std=std
            )
        )
        speeds = []
        for window in range(_WINDOWS.value + 1):
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                next(iterator)
            if window:  # the first window warms up
                speeds.append(_STEPS.value * _BATCH.value / (time.perf_counter() - start))
        print(f"{name:<16} {statistics.median(speeds):>12,.0f} images/s (median of {len(speeds)})")


if __name__ == "__main__":
    app.run(main)

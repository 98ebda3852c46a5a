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

SETTINGS = {
    "no augmentation": AugmentConfig(),
    "flip": AugmentConfig(horizontal_flip=True),
    "crop 2 + flip": AugmentConfig(random_crop_padding=2, horizontal_flip=True),
}


def measure(batch_size: int, windows: int, steps_per_window: int) -> dict:
    """{"load_seconds", and per setting of SETTINGS {"images_per_sec_median", "images_per_sec"}}."""
    start = time.perf_counter()
    split = load_split("fashion_mnist", "train")
    results = {"load_seconds": time.perf_counter() - start, "batch_size": batch_size}
    mean, std = channel_stats(split.images)
    for name, augment in SETTINGS.items():
        iterator = iter(TrainBatches(split, batch_size=batch_size, seed=0, augment=augment))
        speeds = []
        for window in range(windows + 1):
            start = time.perf_counter()
            for _ in range(steps_per_window):
                next(iterator)
            if window:  # the first window warms up
                speeds.append(steps_per_window * batch_size / (time.perf_counter() - start))
        results[name] = {
            "images_per_sec_median": statistics.median(speeds),
            "images_per_sec": speeds,
        }
    return results


def main(argv):
    del argv
    results = measure(_BATCH.value, _WINDOWS.value, _STEPS.value)
    print(f"read the train split into memory in {results['load_seconds']:.1f} s")
    for name in SETTINGS:
        median, count = results[name]["images_per_sec_median"], len(results[name]["images_per_sec"])
        print(f"{name:<16} {median:>12,.0f} images/s (median of {count})")


if __name__ == "__main__":
    # Flags only when run as a script: suite.py imports measure() beside flags of its own.
    _BATCH = flags.DEFINE_integer("batch_size", 128, "Images per batch.")
    _WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows; the median is reported.")
    _STEPS = flags.DEFINE_integer("steps_per_window", 100, "Batches per window.")
    app.run(main)

"""ImageNet-style decoding: CPU milliseconds per image on one core, and images/s on 1 and 2
workers, before (full decode, threads) and after (reduced JPEG decode, worker processes).

    .venv/bin/python benchmarks/image_decoding.py [--images=300] [--rounds=3]

The images are made here with Pillow: smooth random content plus noise, JPEG quality 90, in a
temporary class folder; `--width/--height` 500x375 is the typical ImageNet photo, and a second,
smaller set of large photos (`--large`, 1600x1200) shows what the reduced decode does where it
applies. A row's "ms/image" is process CPU time (the workers' too) per decoded image, so
cores needed = images/s x ms / 1000. Prints a table; writes results/image_decoding.json.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
from absl import app, flags

from cnnjax.data.decode_workers import DecodeProcesses, DecodeSpec, decode_example
from cnnjax.data.image_sources import ImageFolderSource

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "image_decoding.json")
SIZE, RESIZE = 224, 256
# before: the decoding as it was (a full decode, a thread pool); after: reduced JPEG decodes in
# worker processes.
SETTINGS = {"before": ("threads", False), "after": ("processes", True)}


def make_folder(root: str, count: int, width: int, height: int, classes: int = 10) -> None:
    """`count` photo-like JPEGs (quality 90) in root/<class>/."""
    for i in range(count):
        rng = np.random.default_rng(i)
        coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
        smooth = PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.Resampling.BICUBIC)
        pixels = np.asarray(smooth, np.int16) + rng.integers(-12, 13, (height, width, 3))
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        image = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(os.path.join(folder, f"{i}.jpg"), quality=90)


def one_core_ms(source, spec: DecodeSpec, repeats: int) -> float:
    """Median CPU ms per image of `decode_example` in this process (file read included)."""
    jobs = [(index, 0, index) for index in range(len(source))]
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for job in jobs:
            decode_example(source, spec, job)
        times.append((time.process_time() - start) / len(jobs) * 1e3)
    return statistics.median(times)


class ThreadDecoder:
    """Rows decoded on a thread pool, one task per image: how ImageBatches decodes."""

    def __init__(self, source, spec: DecodeSpec, workers: int, rows: int):
        self.source, self.spec, self.rows = source, spec, rows
        self.pool = concurrent.futures.ThreadPoolExecutor(workers)

    def submit(self, jobs):
        images = np.zeros((self.rows, self.spec.image_size, self.spec.image_size, 3), np.uint8)
        labels = np.zeros((self.rows,), np.int32)

        def fill(row, job):
            images[row], labels[row] = decode_example(self.source, self.spec, job)

        return images, labels, [self.pool.submit(fill, row, job) for row, job in enumerate(jobs)]

    def collect(self, pending):
        images, labels, futures = pending
        for future in futures:
            future.result()
        return images, labels

    def close(self):
        self.pool.shutdown()


def pipeline(source, spec, mode, workers, batch_size, batches, ahead=2) -> dict:
    """images/s (median of windows of `batches` batches) and CPU ms per image, all processes."""
    if mode == "threads":
        decoder = ThreadDecoder(source, spec, workers, batch_size)
    else:
        decoder = DecodeProcesses(source, spec, processes=workers, rows=batch_size)
    order = np.random.default_rng(0).permutation(len(source))
    steps = len(source) // batch_size

    def jobs(step):
        first = (step % steps) * batch_size
        return [(int(order[first + r]), 0, first + r) for r in range(batch_size)]

    step, pending = 0, collections.deque()

    def advance():
        nonlocal step
        while len(pending) < ahead:
            pending.append(decoder.submit(jobs(step)))
            step += 1
        decoder.collect(pending.popleft())

    try:
        for _ in range(batches):  # warm-up: workers started, files in the page cache
            advance()
        speeds, cpu_start, wall_start = [], _cpu_seconds(), time.perf_counter()
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(batches):
                advance()
            speeds.append(batches * batch_size / (time.perf_counter() - start))
        cpu = (_cpu_seconds() - cpu_start) / (3 * batches * batch_size) * 1e3
        wall = time.perf_counter() - wall_start
    finally:
        for item in pending:
            decoder.collect(item)
        decoder.close()
    return {"images_per_sec": statistics.median(speeds), "cpu_ms_per_image": cpu, "seconds": wall}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live worker processes (Linux /proc)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except OSError:
            pass
    return total


def draft_fraction(source, spec: DecodeSpec) -> float:
    """The fraction of examples whose JPEG decodes at a reduced scale under `spec`."""
    from cnnjax.data.image_decoding import example_rng, random_resized_crop_box

    reduced = 0
    for index in range(len(source)):
        width, height = PIL.Image.open(source.paths[index]).size
        if spec.train:
            rng = example_rng(spec.seed, 0, index)
            _, _, w, h = random_resized_crop_box(width, height, rng)
            need = (-(-width * SIZE // w), -(-height * SIZE // h))
        else:
            short = min(width, height)
            need = (RESIZE * width // short, RESIZE * height // short)
        reduced += min(width // need[0], height // need[1]) >= 2
    return reduced / len(source)


def measure(images: int, width: int, height: int, large: int, rounds: int, batch_size: int) -> dict:
    """Everything the table shows (see the module docstring), as a dict."""
    results = {
        "machine": {
            "cpu": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "pillow": PIL.__version__,
        },
        "load_average_before": os.getloadavg(),
        "size": SIZE,
        "resize": RESIZE,
        "batch_size": batch_size,
    }
    with tempfile.TemporaryDirectory() as root:
        make_folder(os.path.join(root, "photos"), images, width, height)
        make_folder(os.path.join(root, "large"), large, 1600, 1200)
        source = ImageFolderSource(os.path.join(root, "photos"))
        large_source = ImageFolderSource(os.path.join(root, "large"))
        results["images"] = {
            "count": images,
            "width": width,
            "height": height,
            "mean_kb": np.mean([os.path.getsize(p) for p in source.paths]) / 1024,
        }
        for transform in ("train", "eval"):
            spec = DecodeSpec(SIZE, train=transform == "train", resize=RESIZE)
            off = DecodeSpec(SIZE, train=spec.train, resize=RESIZE, jpeg_draft=False)
            results[transform] = {
                "draft_fraction": draft_fraction(source, spec),
                "large_draft_fraction": draft_fraction(large_source, spec),
                "large_one_core_ms": {
                    "before": one_core_ms(large_source, off, rounds),
                    "after": one_core_ms(large_source, spec, rounds),
                },
            }
            runs = collections.defaultdict(list)
            for _ in range(rounds):  # interleaved, so a neighbour's load falls on all settings
                for name, (mode, jpeg_draft) in SETTINGS.items():
                    setting = spec if jpeg_draft else off
                    runs[name, "one_core_ms"].append(one_core_ms(source, setting, 1))
                    for workers in (1, 2):
                        run = pipeline(source, setting, mode, workers, batch_size, batches=4)
                        runs[name, workers].append(run)
            for name, (mode, jpeg_draft) in SETTINGS.items():
                entry = {"mode": mode, "jpeg_draft": jpeg_draft}
                entry["one_core_ms"] = statistics.median(runs[name, "one_core_ms"])
                for workers in (1, 2):
                    entry[f"workers_{workers}"] = {
                        key: statistics.median(run[key] for run in runs[name, workers])
                        for key in ("images_per_sec", "cpu_ms_per_image")
                    }
                results[transform][name] = entry
    results["load_average_after"] = os.getloadavg()
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


def table(results: dict) -> str:
    images, machine = results["images"], results["machine"]
    lines = [
        f"{images['width']}x{images['height']} JPEG q90 ({images['mean_kb']:.0f} KB), "
        f"{images['count']} files, {results['size']} px; {machine['cores']} cores "
        f"({machine['cpu']}); load average {results['load_average_before'][0]:.1f} before, "
        f"{results['load_average_after'][0]:.1f} after",
        "",
        "transform setting                  1 core ms/img  1 worker img/s  2 workers img/s  "
        "scaling  ms/img at 2  cores per 3k img/s",
    ]
    for transform in ("train", "eval"):
        for name, label in (("before", "full decode, threads"), ("after", "draft, processes")):
            entry = results[transform][name]
            one, two = entry["workers_1"], entry["workers_2"]
            scaling = two["images_per_sec"] / one["images_per_sec"]
            lines.append(
                f"{transform:<9} {name + ' (' + label + ')':<30} {entry['one_core_ms']:>9.2f}"
                f"  {one['images_per_sec']:>14,.0f}  {two['images_per_sec']:>15,.0f}"
                f"  {scaling:>6.2f}x  {two['cpu_ms_per_image']:>11.2f}"
                f"  {3000 * entry['one_core_ms'] / 1000:>18.1f}"
            )
    lines.append("")
    for transform in ("train", "eval"):
        entry = results[transform]
        large = entry["large_one_core_ms"]
        lines.append(
            f"{transform}: reduced decodes {entry['draft_fraction']:.0%} of "
            f"{images['width']}x{images['height']}, {entry['large_draft_fraction']:.0%} of "
            f"1600x1200 photos; 1600x1200 on one core {large['before']:.2f} -> "
            f"{large['after']:.2f} ms/img ({large['before'] / large['after']:.1f}x)"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    results = measure(
        _IMAGES.value, _WIDTH.value, _HEIGHT.value, _LARGE.value, _ROUNDS.value, _BATCH.value
    )
    print(table(results))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    _IMAGES = flags.DEFINE_integer("images", 300, "JPEGs of --width x --height in the folder.")
    _WIDTH = flags.DEFINE_integer("width", 500, "Width of the photos.")
    _HEIGHT = flags.DEFINE_integer("height", 375, "Height of the photos.")
    _LARGE = flags.DEFINE_integer("large", 40, "1600x1200 photos for the one-core figures.")
    _ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved repeats; medians are reported.")
    _BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch.")
    app.run(main)

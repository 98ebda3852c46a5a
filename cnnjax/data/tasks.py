"""Tasks built from an image classification split, for the 1-D, 3-D and dense-prediction nets.

Each task is a pure function of (split, seed): the same examples every run, every resume.

- `classification`: the split as it is.
- `rows`: each image [28, 28, 1] becomes a sequence of 28 steps (its rows) of 28 features; the
  label is the item's class. A 1-D convolution must combine rows to recognize the item.
- `segmentation`: two items placed at random positions on a 64x64 black canvas (the second drawn
  over the first); the per-pixel label is 1 + the class of the item covering the pixel where its
  intensity exceeds 10% of full scale, else 0 (background): 11 classes.
- `motion`: clips of 8 frames of 44x44, one item moving in a straight line at 2 pixels per frame
  in one of 8 compass directions from a random start; the label is the direction (8 classes).
  One frame carries no information about it: chance is 12.5% unless the net uses time.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data.sources import Split
from cnnjax.errors import UserError

TASKS = ("classification", "rows", "segmentation", "motion")
SEGMENTATION_CANVAS = 64
ITEMS_PER_CANVAS = 2
FOREGROUND_LEVEL = 26  # 10% of 255: darker pixels of an item count as background
CLIP_FRAMES, CLIP_CANVAS, CLIP_SPEED = 8, 44, 2
DIRECTIONS = np.array(
    [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
)  # (dy, dx) per class: E, SE, S, SW, W, NW, N, NE


def derive(task: str, split: Split, *, seed: int) -> Split:
    """The split of `task` built from the image split `split` ([N, H, W, 1] uint8)."""
    if task not in TASKS:
        raise UserError(f"unknown data task {task!r}: choose one of {', '.join(TASKS)}")
    if task == "classification":
        return split
    if split.images.shape[-1] != 1:
        raise UserError(f"data task {task!r} needs single-channel images (e.g. fashion_mnist)")
    rng = np.random.default_rng([seed, len(split.labels)])
    if task == "rows":
        return Split(split.images[..., 0], split.labels, split.num_classes)  # [N, 28, 28]
    if task == "segmentation":
        return _segmentation(split, rng)
    return _motion(split, rng)


def _segmentation(split: Split, rng: np.random.Generator) -> Split:
    count, size = len(split.labels), split.images.shape[1]
    canvas = np.zeros((count, SEGMENTATION_CANVAS, SEGMENTATION_CANVAS, 1), np.uint8)
    masks = np.zeros((count, SEGMENTATION_CANVAS, SEGMENTATION_CANVAS), np.int32)
    # Item 0 is example n itself; item 1 another example, so every example is used.
    sources = np.stack([np.arange(count), rng.integers(0, count, count)], axis=1)
    corners = rng.integers(0, SEGMENTATION_CANVAS - size + 1, size=(count, ITEMS_PER_CANVAS, 2))
    for n in range(count):
        for item in range(ITEMS_PER_CANVAS):
            image = split.images[sources[n, item], :, :, 0]
            y, x = corners[n, item]
            region = canvas[n, y : y + size, x : x + size, 0]
            foreground = image > FOREGROUND_LEVEL
            region[foreground] = image[foreground]
            masks[n, y : y + size, x : x + size][foreground] = split.labels[sources[n, item]] + 1
    return Split(canvas, masks, split.num_classes + 1)


def _motion(split: Split, rng: np.random.Generator) -> Split:
    count, size = len(split.labels), split.images.shape[1]
    travel = CLIP_SPEED * (CLIP_FRAMES - 1)
    room = CLIP_CANVAS - size  # free pixels along each axis
    directions = rng.integers(0, len(DIRECTIONS), count)
    clips = np.zeros((count, CLIP_FRAMES, CLIP_CANVAS, CLIP_CANVAS, 1), np.uint8)
    for n in range(count):
        dy, dx = DIRECTIONS[directions[n]] * CLIP_SPEED
        # A start from which the whole path stays on the canvas.
        y0 = rng.integers(travel if dy < 0 else 0, room - (travel if dy > 0 else 0) + 1)
        x0 = rng.integers(travel if dx < 0 else 0, room - (travel if dx > 0 else 0) + 1)
        for t in range(CLIP_FRAMES):
            y, x = y0 + dy * t, x0 + dx * t
            clips[n, t, y : y + size, x : x + size] = split.images[n]
    return Split(clips, directions.astype(np.int32), len(DIRECTIONS))

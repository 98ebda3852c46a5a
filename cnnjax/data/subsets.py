"""Class subsets of a split, for transfer studies: `select_classes(split, "1,3,5")`.

Pretraining on some classes of a dataset and fine-tuning on the others (or on a few examples per
class) needs the same data read with fewer classes; the selection is a pure function of the
split, so every run and every resume sees the same examples.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data.sources import Split
from cnnjax.errors import UserError


def parse_classes(text: str, num_classes: int) -> list[int]:
    """The class ids of `text` ("1,3,5"); [] for "" (every class). Unknown or repeated ids fail."""
    if not text.strip():
        return []
    try:
        classes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(
            f"config.data.classes={text!r}: give class ids separated by commas, e.g. '1,3,5'"
        ) from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or len(set(classes)) != len(classes):
        raise UserError(
            f"config.data.classes={text!r}: ids must be distinct and in 0..{num_classes - 1}"
        )
    return classes


def select_classes(split: Split, classes: str, *, examples_per_class: int = 0) -> Split:
    """The examples of `split` whose label is in `classes`, relabeled 0..k-1 in the order given,
    keeping the split's order; with `examples_per_class` > 0, only the first n of each class."""
    ids = parse_classes(classes, split.num_classes)
    if not ids and not examples_per_class:
        return split
    ids = ids or list(range(split.num_classes))
    new_label = np.full(split.num_classes, -1, np.int32)
    new_label[ids] = np.arange(len(ids), dtype=np.int32)
    keep = new_label[split.labels] >= 0
    if examples_per_class:
        # Rank of each example within its class, in split order: keep ranks below n.
        rank = np.zeros(len(split.labels), np.int64)
        for label in ids:
            members = np.flatnonzero(split.labels == label)
            rank[members] = np.arange(len(members))
        keep &= rank < examples_per_class
    if not keep.any():
        raise UserError(f"no example of classes {classes!r} in the split: check data.classes")
    return Split(split.images[keep], new_label[split.labels[keep]], len(ids))

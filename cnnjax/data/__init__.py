"""The data stage: datasets by TFDS name, and the deterministic in-memory input pipeline."""

from cnnjax.data.pipeline import AugmentConfig, TrainBatches, channel_stats, eval_batches
from cnnjax.data.sources import KNOWN_DATASETS, Split, load_split

__all__ = [
    "KNOWN_DATASETS",
    "AugmentConfig",
    "Split",
    "TrainBatches",
    "channel_stats",
    "eval_batches",
    "load_split",
]

"""Training: train state, optimizers, pure steps, checkpoints and the loop."""

from cnnjax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]

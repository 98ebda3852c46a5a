"""Training: train state, optimizers, pure steps, checkpoints and the loop.

`train_and_evaluate` is imported on first use, so that light modules of this package (the
workdir lock the command line takes first) load without JAX.
"""

__all__ = ["train_and_evaluate"]


def __getattr__(name: str):
    if name == "train_and_evaluate":
        from cnnjax.train.loop import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""SGD, momentum, Nesterov, Adam and RMSProp, each over a small learning-rate grid.

    cnnjax sweep --config=experiments/optimizers/config.py --workdir=runs/optimizers --workers=2

LeNet-5 (ReLU, max pooling) without batch norm or augmentation, which would hide part of the
optimizers' differences (batch norm makes plain SGD far less sensitive to its rate), on the full
Fashion-MNIST training split for EPOCHS epochs, batch 128, the default recipe's cosine decay to
zero for every optimizer; test accuracy on the full test split. Each optimizer gets five learning
rates a factor of about 3 apart around its usual value, the same relative spread for all, so the
spread of accuracy over its grid is its sensitivity to the rate; 3 seeds per arm (75 runs).

The grids: momentum and Nesterov use 0.9, whose steady-state step is 1 / (1 - 0.9) = 10 times
the rate, so their grid is plain SGD's divided by 10. Plain SGD at 1.0 left the net at chance
within one epoch in a pilot, while momentum at the equivalent 0.1 trained (its velocity builds
up over the first steps, a built-in warm-up). RMSProp is
Hinton's (Lecture 6e: squared-gradient average with decay 0.9, no momentum; cnnjax passes
optimizer.momentum to optax.rmsprop, so it is set to 0 for those arms). Adam uses optax's
defaults (beta1 0.9, beta2 0.999, eps 1e-8).

Arguments (`config.py:key=value,...`): epochs (default EPOCHS), dataset=fashion_mnist|cifar10,
download (let TFDS download the dataset), smoke (a tiny budget for tests: 2 runs of 4 steps).
See README.md.
"""

import ml_collections

from cnnjax.config_base import parse_arg
from cnnjax.errors import UserError

EPOCHS = 8
# Per optimizer: (optimizer.momentum, learning rates). Momentum is ignored by sgd and adam.
# The fifth, highest rate of each was added after the first four: SGD's and RMSProp's best
# were at the top of their grids (README.md), and a best at a grid's edge is only a bound.
LEARNING_RATE_GRIDS = {
    "sgd": (0.0, (0.01, 0.03, 0.1, 0.3, 1.0)),
    "momentum": (0.9, (0.003, 0.01, 0.03, 0.1, 0.3)),
    "nesterov": (0.9, (0.003, 0.01, 0.03, 0.1, 0.3)),
    "adam": (0.9, (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "rmsprop": (0.0, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
}


def optimizer_axis(grids: dict) -> dict:
    """One sweep factor whose levels are (optimizer, rate) pairs: the grids differ per
    optimizer, so the two cannot be crossed. Arms read "optimizer=adam lr=0.001"."""
    pairs = [(name, m, lr) for name, (m, rates) in grids.items() for lr in rates]
    return {
        "_name": "optimizer",
        "_labels": tuple(f"{name} lr={lr:g}" for name, _, lr in pairs),
        "optimizer.name": tuple(name for name, _, _ in pairs),
        "optimizer.momentum": tuple(m for _, m, _ in pairs),
        "optimizer.learning_rate": tuple(lr for _, _, lr in pairs),
    }


def get_config(arg: str | None = None):
    args = parse_arg(arg, epochs=EPOCHS, dataset="fashion_mnist", download=False, smoke=False)
    if args.dataset not in ("fashion_mnist", "cifar10"):
        raise UserError(f"dataset={args.dataset!r}: use fashion_mnist or cifar10")
    if args.epochs < 1:
        raise UserError(f"epochs={args.epochs}: use at least 1")
    sweep = ml_collections.ConfigDict()
    sweep.base = "../../configs/lenet5_fashion_mnist.py"
    sweep.overrides = {
        "model": {"normalization": "none", "dropout_rate": 0.0},
        "data": {
            "name": args.dataset,
            "download": args.download,
            "augment": {"horizontal_flip": False, "random_crop_padding": 0},
        },
        "optimizer": {"schedule": "cosine", "warmup_epochs": 0.0, "weight_decay": 0.0},
        "train": {"epochs": args.epochs, "eval_every_epochs": 4, "log_every_steps": 50},
    }
    sweep.axes = [optimizer_axis(LEARNING_RATE_GRIDS)]
    sweep.seeds = (0, 1, 2)
    if args.smoke:
        # Plain SGD and Adam at their usual rates.
        sweep.axes = [optimizer_axis({"sgd": (0.0, (0.1,)), "adam": (0.9, (1e-3,))})]
        sweep.overrides["data"]["train_split"] = "train[:512]"
        sweep.overrides["data"]["eval_split"] = "test[:256]"
        sweep.overrides["train"].update(epochs=1, eval_every_epochs=1, log_every_steps=2)
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "train_accuracy", "test_loss"),
        "curves": [("test", "accuracy"), ("train", "loss")],
        # The sensitivity picture: accuracy against the rate, one line per optimizer.
        "against": [
            {"x": "optimizer.learning_rate", "lines": "optimizer.name", "log_x": True},
            {
                "x": "optimizer.learning_rate",
                "lines": "optimizer.name",
                "log_x": True,
                "metric": "test_loss",
                "best": "min",
            },
        ],
    }
    return sweep

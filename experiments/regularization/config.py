"""Weight decay x dropout x light augmentation: which explicit regularizer helps a small CNN?

    cnnjax sweep --config=experiments/regularization/config.py \\
        --workdir=runs/regularization --workers=2

dropout_vs_augmentation's design (experiments/dropout_vs_augmentation/) with weight decay crossed
in: LeNet-5 (ReLU, max pooling, no batch norm, which regularizes too) trained on the first
10,000 Fashion-MNIST images, a size at which it overfits, for 20 epochs with Adam 2e-3 and cosine
decay, batch 128; test accuracy on the full test split. Factors (12 arms, 3 seeds each):

- weight decay 0, 5e-4 (the usual CIFAR value) or 5e-3, on the kernels only (never biases);
- dropout 0 or 0.5 after each hidden dense layer (120 and 84 units);
- augment none or light (horizontal flips; dropout_vs_augmentation found random crops hurt at
  this budget, so they are left out here).

Weight decay is *coupled* here: cnnjax adds weight_decay * w to the gradient before Adam
(cnnjax/train/optim.py), i.e. L2 regularization of the loss (the loss gains
weight_decay / 2 * |w|^2), which Adam then rescales per parameter like any gradient; only
optimizer.name="adamw" decouples it (Loshchilov & Hutter 2019). With plain SGD the two coincide
up to the learning rate; with Adam they do not, which is why two strengths are tried.

Arguments (`config.py:key=value,...`): train_examples=10000 (0 = all 60,000), epochs=20,
seeds=3 (seeds 0 to seeds - 1 per arm), dataset=fashion_mnist|cifar10, download (let TFDS
download the dataset), smoke (a tiny budget for tests: 2 runs of 4 steps). See README.md.
"""

import ml_collections

from cnnjax.config_base import parse_arg
from cnnjax.errors import UserError

# 0 is the reference arm's; 5e-4 is the value of the CIFAR ResNet/VGG recipes (with SGD);
# 5e-3 ten times stronger, since coupled L2 under Adam is weakened where gradients are large.
WEIGHT_DECAYS = (0.0, 5e-4, 5e-3)


def get_config(arg: str | None = None):
    args = parse_arg(
        arg,
        train_examples=10000,
        epochs=20,
        seeds=3,
        dataset="fashion_mnist",
        download=False,
        smoke=False,
    )
    if args.dataset not in ("fashion_mnist", "cifar10"):
        raise UserError(f"dataset={args.dataset!r}: use fashion_mnist or cifar10")
    if args.train_examples < 0 or args.epochs < 1 or args.seeds < 1:
        raise UserError(
            f"train_examples={args.train_examples}, epochs={args.epochs}, seeds={args.seeds}: use "
            "train_examples >= 0 (0 = the whole training split), epochs >= 1 and seeds >= 1"
        )
    sweep = ml_collections.ConfigDict()
    sweep.base = "../../configs/lenet5_fashion_mnist.py"
    train_split = f"train[:{args.train_examples}]" if args.train_examples else "train"
    sweep.overrides = {
        "model": {"normalization": "none"},
        "data": {"name": args.dataset, "train_split": train_split, "download": args.download},
        "optimizer": {"name": "adam", "learning_rate": 2e-3, "schedule": "cosine"},
        "train": {"epochs": args.epochs, "eval_every_epochs": 2, "log_every_steps": 20},
    }
    sweep.axes = [
        {"_name": "weight_decay", "optimizer.weight_decay": WEIGHT_DECAYS},
        {"_name": "dropout", "model.dropout_rate": (0.0, 0.5)},
        {
            "_name": "augment",
            "_labels": ("none", "light"),
            "data.augment.horizontal_flip": (False, True),
        },
    ]
    sweep.seeds = tuple(range(args.seeds))
    if args.smoke:
        # The two extremes only: no regularizer at all, and all three at the strongest decay.
        sweep.axes = [
            {
                "_name": "regularizers",
                "_labels": ("none", "all"),
                "optimizer.weight_decay": (0.0, WEIGHT_DECAYS[-1]),
                "model.dropout_rate": (0.0, 0.5),
                "data.augment.horizontal_flip": (False, True),
            }
        ]
        sweep.overrides["data"]["train_split"] = "train[:512]"
        sweep.overrides["data"]["eval_split"] = "test[:256]"
        sweep.overrides["train"].update(epochs=1, eval_every_epochs=1, log_every_steps=2)
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "train_accuracy", "test_loss"),
        "curves": [("test", "accuracy"), ("train_epoch", "accuracy")],
    }
    return sweep

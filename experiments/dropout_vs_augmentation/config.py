"""Dropout vs data augmentation: a factorial design (Hernandez-Garcia & Koenig 2018).

    cnnjax sweep --config=experiments/dropout_vs_augmentation/config.py \\
        --workdir=runs/dropout_vs_augmentation --workers=2

Hernandez-Garcia & Koenig ("Data augmentation instead of explicit regularization", 2018) find
that augmentation alone matches or beats explicit regularization (weight decay + dropout), and
that adding explicit regularization to augmentation brings little. Here: LeNet-5 (ReLU, max
pooling, no batch norm, which regularizes too) trained on 10,000 Fashion-MNIST images, a size at
which it overfits, for 20 epochs with Adam 2e-3 and cosine decay; evaluated on the full test
split. Factors: dropout (0 or 0.5 after each hidden dense layer) x augmentation (none; light:
horizontal flips; heavier: flips and random 28x28 crops of the image zero-padded by 2 pixels),
three seeds per arm. Weight decay can be crossed in with one more axis
({"optimizer.weight_decay": (0.0, 5e-4)}).

Arguments: train_examples=10000 (0 = the full 60,000), epochs=20, dataset=fashion_mnist|cifar10
(cifar10 uses crops padded by 4), download (let TFDS download the dataset), smoke (a tiny
budget for tests).
See README.md for the measured table.
"""

import ml_collections

from cnnjax.config_base import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(
        arg, train_examples=10000, epochs=20, dataset="fashion_mnist", download=False, smoke=False
    )
    sweep = ml_collections.ConfigDict()
    sweep.base = "../../configs/lenet5_fashion_mnist.py"
    train_split = f"train[:{args.train_examples}]" if args.train_examples else "train"
    crop = 4 if args.dataset == "cifar10" else 2
    sweep.overrides = {
        "model": {"normalization": "none"},
        "data": {"name": args.dataset, "train_split": train_split, "download": args.download},
        "train": {"epochs": args.epochs, "eval_every_epochs": 2, "log_every_steps": 20},
    }
    sweep.axes = [
        {"_name": "dropout", "model.dropout_rate": (0.0, 0.5)},
        {
            "_name": "augment",
            "_labels": ("none", "light", "heavier"),
            "data.augment.horizontal_flip": (False, True, True),
            "data.augment.random_crop_padding": (0, 0, crop),
        },
    ]
    sweep.seeds = (0, 1, 2)
    if args.smoke:
        sweep.overrides["data"]["train_split"] = "train[:512]"
        sweep.overrides["data"]["eval_split"] = "test[:256]"
        sweep.overrides["train"]["epochs"] = 1
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "train_accuracy", "test_loss"),
        "curves": [("test", "accuracy"), ("train_epoch", "accuracy")],
    }
    return sweep

"""Normalization types: none / batch / layer / instance / group, at batch 128 and batch 8.

    cnnjax sweep --config=experiments/normalization/config.py:model=lenet5 \\
        --workdir=runs/normalization_lenet5 --workers=2
    cnnjax sweep --config=experiments/normalization/config.py:model=resnet20 \\
        --workdir=runs/normalization_resnet20 --workers=2

Ioffe & Szegedy (2015): batch norm speeds training; Wu & He (2018, "Group Normalization"): its
statistics degrade at small batches (ResNet-50 on ImageNet: 23.6% top-1 error at 32 images per
GPU, 24.8% at 8, 34.7% at 2) while group norm stays put (24.1% / 24.0% / 24.1%); layer and
instance norm trail group norm. Each `model` is its own sweep of the normalization (5 kinds)
crossed with the batch size (128 or 8), 3 seeds: 30 runs. SGD with momentum 0.9 and cosine
decay; the learning rate follows the batch size by the linear rule (Goyal et al. 2017): the
rate at 8 is 8/128 of the rate at 128, so that an epoch moves the weights about as far at
either size. Test accuracy on the full test split after the last epoch; training curves.

- `model=lenet5`: LeNet-5 on all 60,000 training images, 5 epochs (the normalization after both
  convolutions and both hidden dense layers).
- `model=resnet20`: the CIFAR ResNet-20 (He et al. 2016) on the first 10,000 training images,
  3 epochs: ResNet-20 trains about 200 images a second on one core at batch 128 (README.md,
  "Budget").

The kinds are cnnjax's (README.md): `layer` normalizes each position over the channels (Flax's
LayerNorm over the last axis), not over channels and positions as in Wu & He; group norm runs
as `group:4`, 4 groups (3 in LeNet-5's 6-map layer): cnnjax's plain `group` takes 32 groups
reduced to a divisor of the channel count, which in layers of 32 channels or fewer (LeNet-5's 6
and 16 maps, ResNet-20's 16- and 32-channel stages) is one channel per group, i.e. instance
norm.

Arguments (`config.py:key=value,...`): model=lenet5|resnet20, dataset=fashion_mnist|cifar10,
download (let TFDS download the dataset), train_examples and epochs (0: the model's default
above), smoke (1 run of a few steps, for tests).
See README.md for the design and the measured table.
"""

import ml_collections

from cnnjax.config_base import parse_arg

NORMALIZATIONS = ("none", "batch", "layer", "instance", "group:4")
BATCH_SIZES = (128, 8)
# Per model: the base recipe, the learning rate at batch 128, weight decay, and the default
# budget (training examples, 0 = all; epochs). One rate for every normalization, the highest
# that trained the net without normalization in a 1-epoch trial (README.md, "Trials"): ResNet-20
# without it stays at chance at He et al.'s 0.1 (with or without warmup) and at 0.05.
MODELS = {
    "lenet5": {
        "base": "../../configs/lenet5_fashion_mnist.py",
        "learning_rate": 0.05,
        "weight_decay": 0.0,
        "train_examples": 0,
        "epochs": 5,
    },
    "resnet20": {
        "base": "../../configs/resnet_cifar10.py:model=resnet20",
        "learning_rate": 0.02,
        "weight_decay": 1e-4,
        "train_examples": 10000,
        "epochs": 3,
    },
}
# Images per training-log window (both batch sizes): the curves are read at the same points.
IMAGES_PER_LOG = 2560


def get_config(arg: str | None = None):
    args = parse_arg(
        arg,
        model="lenet5",
        dataset="fashion_mnist",
        download=False,
        train_examples=0,
        epochs=0,
        smoke=False,
    )
    if args.model not in MODELS:
        raise ValueError(f"model={args.model!r}: use one of {', '.join(MODELS)}")
    if args.dataset not in ("fashion_mnist", "cifar10"):
        raise ValueError(f"dataset={args.dataset!r}: use fashion_mnist or cifar10")
    setting = MODELS[args.model]
    train_examples = args.train_examples or setting["train_examples"]
    epochs = args.epochs or setting["epochs"]
    sweep = ml_collections.ConfigDict()
    sweep.base = setting["base"]
    sweep.overrides = {
        "data": {
            "name": args.dataset,
            "download": args.download,  # let TFDS fetch and prepare the dataset (online)
            "train_split": f"train[:{train_examples}]" if train_examples else "train",
            "eval_split": "test",
            "augment": {
                "horizontal_flip": True,
                # CIFAR-10's usual crops; none on Fashion-MNIST (centred objects, short runs).
                "random_crop_padding": 4 if args.dataset == "cifar10" else 0,
            },
        },
        "model": {"dropout_rate": 0.0},
        "optimizer": {
            "name": "momentum",
            "momentum": 0.9,
            "schedule": "cosine",
            "warmup_epochs": 0.0,
            "weight_decay": setting["weight_decay"],
        },
        # One evaluation, after the last epoch: evaluating ResNet-20 on the 10,000 test images
        # costs about 15 s of a core, a tenth of a run.
        "train": {"epochs": epochs, "eval_every_epochs": epochs},
    }
    rate = setting["learning_rate"]
    sweep.axes = [
        {"model.normalization": NORMALIZATIONS},
        batch_factor(BATCH_SIZES, rate, images_per_log=IMAGES_PER_LOG),
    ]
    sweep.seeds = (0, 1, 2)
    if args.smoke:
        sweep.overrides["data"]["train_split"] = "train[:256]"
        sweep.overrides["data"]["eval_split"] = "test[:128]"
        sweep.overrides["train"] = {"epochs": 1, "eval_every_epochs": 1, "steps": 4}
        sweep.axes = [
            {"model.normalization": ("group:4",)},
            batch_factor((8,), rate, images_per_log=16),
        ]
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "train_accuracy", "test_loss", "train_images_per_sec"),
        "curves": [("train", "loss"), ("train", "accuracy")],
        # Each kind's test accuracy from batch 128 down to 8, one line per kind.
        "against": {"x": "data.batch_size", "lines": "model.normalization", "log_x": True},
    }
    return sweep


def batch_factor(sizes: tuple[int, ...], rate: float, *, images_per_log: int) -> dict:
    """The batch-size factor: each size with the learning rate `rate * size / 128` (the linear
    scaling rule) and a log window of `images_per_log` images."""
    return {
        "_name": "batch",
        "_labels": tuple(str(b) for b in sizes),
        "data.batch_size": sizes,
        "optimizer.learning_rate": tuple(round(rate * b / 128, 8) for b in sizes),
        "train.log_every_steps": tuple(images_per_log // b for b in sizes),
    }

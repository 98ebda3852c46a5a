"""AlexNet's design choices: local response normalization and overlapping pooling.

    cnnjax sweep --config=experiments/alexnet_design/config.py \\
        --workdir=runs/alexnet_design --workers=2

Krizhevsky, Sutskever & Hinton (2012) report that response normalization (section 3.3) lowers
their ImageNet top-1 / top-5 error by 1.4 / 1.2 points, and overlapping pooling (3x3 windows at
stride 2 rather than 2x2 at stride 2, maps of equal size; section 3.4) by 0.4 / 0.3 points. Here
a 3 x 2 factorial design on a small AlexNet: LRN (alpha 0.81, off, or the paper's alpha 1e-4)
x pooling (3x3 or 2x2 windows at stride 2), 4 seeds per arm (24 runs).

The net is the paper's layout (conv1 11x11 stride 4 unpadded, LRN after the ReLUs of conv1 and
conv2, max-pooling after conv1, conv2 and conv5, dropout 0.5 on the outputs of fc6 and fc7) at a
quarter of its filters (24-64-96-96-64) with 512-unit dense layers: 1.68 M parameters.
Fashion-MNIST is upscaled 4x to 112x112 and zero-padded to 131 = 4 * 31 + 7 so that, as with
the paper's 227 = 4 * 55 + 7, both poolings give maps of one size (31 -> 15 -> 7 -> 3).

The paper's LRN constants (k 2, n 5, alpha 1e-4, beta 0.75) were chosen for its inputs,
mean-subtracted 0-255 pixels; cnnjax standardizes pixels, i.e. divides them by about 90 here
(Fashion-MNIST's pixel standard deviation in 0-255 units). On such inputs alpha 1e-4 barely
normalizes: alpha * sum(a^2) / k is about 2e-4 at conv1 (measured, README.md), so LRN is a
division by k^0.75 = 1.68. LRN_alpha(c * a) = c * LRN_{c^2 alpha}(a), so alpha = 1e-4 * 90^2 =
0.81 normalizes the standardized inputs as 1e-4 does the paper's pixels: that is the first level
(the first arm, LRN 0.81 with overlapping pooling, is the paper's net and the reference of the
comparisons); the paper's alpha as such is the third.

SGD with momentum 0.9 and weight decay 5e-4 (the paper's), learning rate 0.02 with cosine decay
(0.05 left overlapping pooling without LRN at chance; README.md), batch 128, horizontal flips;
3 epochs on the first 20,000 training images; test accuracy on the full test split.

Arguments (`config.py:key=value,...`): train_examples (0 = all 60,000), epochs, learning_rate,
seeds (how many per arm, from 0), dataset=fashion_mnist|cifar10 (cifar10: 32x32 upscaled 4x to
128, padded to 131, crops padded by 4; its pixels' spread is about 64 of 255, so alpha 0.41 is
the rescaled one), download (let TFDS download the dataset), smoke (1 run of a few steps, for
tests).
See README.md for the design, the power and the measured table.
"""

import ml_collections

from cnnjax.config_base import parse_arg

# The budget on Fashion-MNIST: 24 runs of 60,000 images each, about 38 minutes on 2 cores with
# --workers=2 (README.md, "Budget").
TRAIN_EXAMPLES = 20000
EPOCHS = 3
SEEDS = 4
# 0.05, the highest rate at which every arm trained in 1-epoch trials, left all 4 runs of
# overlapping pooling without LRN at chance over 3 epochs (README.md, "First sweep"); 0.02 trained
# every arm in the trials.
LEARNING_RATE = 0.02
PAPER_LRN_ALPHA = 1e-4
# The paper's alpha times the square of the pixels' standard deviation in 0-255 units: the
# constant that normalizes standardized inputs as the paper's does its raw ones (docstring).
RESCALED_LRN_ALPHA = {"fashion_mnist": 0.81, "cifar10": 0.4}  # 1e-4 * 90^2, 1e-4 * 63^2


def get_config(arg: str | None = None):
    args = parse_arg(
        arg,
        train_examples=TRAIN_EXAMPLES,
        epochs=EPOCHS,
        seeds=SEEDS,
        learning_rate=LEARNING_RATE,
        dataset="fashion_mnist",
        download=False,
        smoke=False,
    )
    if args.dataset not in RESCALED_LRN_ALPHA:
        raise ValueError(f"dataset={args.dataset!r}: use fashion_mnist or cifar10")
    if args.seeds < 1:
        raise ValueError(f"seeds={args.seeds}: run at least 1 seed per arm")
    if args.learning_rate <= 0:
        raise ValueError(f"learning_rate={args.learning_rate}: give a rate > 0")
    sweep = ml_collections.ConfigDict()
    # The paper's layout (alexnet_paper); the recipe declares the switches set below.
    sweep.base = "../../configs/alexnet_cifar10.py:paper"
    train_split = f"train[:{args.train_examples}]" if args.train_examples else "train"
    sweep.overrides = {
        "data": {
            "name": args.dataset,
            "download": args.download,  # let TFDS fetch and prepare the dataset (online)
            "train_split": train_split,
            "eval_split": "test",
            "batch_size": 128,
            # AlexNet's 11x11 stride-4 first layer needs large inputs: 28 -> 112 (32 -> 128).
            "augment": {
                "upscale": 4,
                "horizontal_flip": True,
                "random_crop_padding": 4 if args.dataset == "cifar10" else 0,
            },
        },
        "model": {
            "dropout_rate": 0.5,
            "options": {"width_multiplier": 0.25, "hidden_units": 512, "input_size": 131},
        },
        "optimizer": {
            "name": "momentum",
            "momentum": 0.9,
            "learning_rate": args.learning_rate,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup_epochs": 0.0,
        },
        # One evaluation, after the last epoch (the full test split costs ~10 s of a core).
        "train": {"epochs": args.epochs, "eval_every_epochs": args.epochs, "log_every_steps": 20},
    }
    rescaled = RESCALED_LRN_ALPHA[args.dataset]
    lrn = {
        "_name": "lrn",
        "_labels": (f"alpha_{rescaled}", "off", f"alpha_{PAPER_LRN_ALPHA}"),
        "model.options.lrn": (True, False, True),
        "model.options.lrn_alpha": (rescaled, PAPER_LRN_ALPHA, PAPER_LRN_ALPHA),
    }
    pooling = {
        "_name": "pool",
        "_labels": ("3x3s2", "2x2s2"),
        "model.options.pool_window": (3, 2),
        "model.options.pool_stride": (2, 2),
    }
    sweep.axes = [lrn, pooling]
    sweep.seeds = tuple(range(args.seeds))
    if args.smoke:
        sweep.overrides["data"]["train_split"] = "train[:256]"
        sweep.overrides["data"]["eval_split"] = "test[:128]"
        sweep.overrides["data"]["batch_size"] = 32
        sweep.overrides["train"] = {"epochs": 1, "eval_every_epochs": 1, "steps": 3}
        sweep.overrides["train"]["log_every_steps"] = 1
        # One run, each switch away from the recipe's default (LRN at the rescaled alpha, 2x2
        # pooling): a second architecture would double the smoke's compile time in the suite.
        sweep.axes = [
            {
                "_name": "design",
                "_labels": ("lrn_2x2s2",),
                "model.options.lrn": (True,),
                "model.options.lrn_alpha": (rescaled,),
                "model.options.pool_window": (2,),
            }
        ]
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "train_accuracy", "test_loss", "train_images_per_sec"),
        "curves": [("train", "loss"), ("train", "accuracy")],
    }
    return sweep

"""Why convolution: dense nets, a locally connected net and LeNet-5 on plain and shuffled pixels.

    cnnjax sweep --config=experiments/why_convolution/config.py \\
        --workdir=runs/why_convolution --workers=2

The course's claims: weight sharing and local connectivity give a ConvNet fewer parameters and
better accuracy than a dense net on images, and some robustness to translation; and with the
pixels of every image shuffled by one fixed permutation (train and test alike) a dense net does
not care while the ConvNet loses its advantage, since its prior (neighbouring pixels belong
together) no longer holds. Four models at equal epochs, each on plain and shuffled pixels:

- `logistic`: softmax regression, 7,850 parameters;
- `mlp`: 784-800-10 with ReLU, 636,010;
- `lenet5_local`: LeNet-5 whose C1 and C3 are locally connected (local, no weight sharing),
  423,038;
- `lenet5`: LeNet-5 (local and shared), 61,706.

Every arm trains with the shared recipe (recipe.py: no normalization, dropout, weight decay or
augmentation, Adam 1e-3 with cosine decay, batch 128) on the 60,000 training images, and is
evaluated on the 10,000 test images, also under test-time shifts of 1-4 pixels (each the mean
of the four directions; on shuffled arms the shift moves the object before the shuffle):
report.invariance, cnnjax/sweep/report_invariance.py. Three seeds per arm.

Arguments (`config.py:key=value,...`): epochs (default EPOCHS), seeds (how many, default 3),
dataset (fashion_mnist, or mnist, cifar10, cifar100: the dense nets flatten any input, LeNet-5
pads to 32x32), download (let TFDS download the dataset), smoke (tests: 2 runs of a few steps on
256 images).
See README.md for the design and the measured tables.
"""

import ml_collections

from cnnjax.config_base import parse_arg

# Chosen to fit the study into about 40 minutes on 2 cores (README.md, "Cost"): lenet5_local,
# whose locally connected layers XLA:CPU runs ~10x slower than LeNet-5's convolutions, is 6 of
# the 24 runs but most of the time.
EPOCHS = 5
MODELS = ("logistic", "mlp", "lenet5_local", "lenet5")
# Any fixed seed: one shuffle of the 784 positions for every run, training and test alike.
PERMUTATION_SEED = 0
SHIFTS = (0, 1, 2, 3, 4)  # pixels


def get_config(arg: str | None = None):
    args = parse_arg(
        arg, epochs=EPOCHS, seeds=3, dataset="fashion_mnist", download=False, smoke=False
    )
    models, seeds, shifts = MODELS, tuple(range(args.seeds)), SHIFTS
    sweep = ml_collections.ConfigDict()
    sweep.base = f"recipe.py:epochs={args.epochs}"
    if args.smoke:
        # One model on plain and shuffled pixels: the shuffle and the shift evaluation both run.
        sweep.base = "recipe.py:smoke"
        models, seeds, shifts = ("lenet5",), (0,), (0, 2)
    sweep.overrides = {
        "data": {"name": args.dataset, "download": args.download},
        "train": {"eval_every_epochs": 1},
    }
    sweep.axes = [
        {"_name": "model", "model.name": models},
        {
            "_name": "pixels",
            "_labels": ("plain", "shuffled"),
            "data.pixel_permutation_seed": (-1, PERMUTATION_SEED),
        },
    ]
    sweep.seeds = seeds
    sweep.report = {
        # Parameter counts are fixed per model: in the docstring above and README.md.
        "metrics": ("test_accuracy", "train_accuracy"),
        "invariance": {"shift": shifts},
        "curves": [("test", "accuracy"), ("train_epoch", "accuracy")],
    }
    return sweep

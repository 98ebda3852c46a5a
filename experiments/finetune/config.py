"""Fine-tuning vs training from scratch on a few hundred examples (transfer learning).

    cnnjax train --config=experiments/finetune/pretrain.py --workdir=runs/finetune_pretrain
    cnnjax sweep --config=experiments/finetune/config.py:pretrained=runs/finetune_pretrain \\
        --workdir=runs/finetune --workers=2

The course's point: features learned on one task transfer to a related one, so with little data
fine-tuning a pretrained network beats training it from scratch. Task: the five Fashion-MNIST
classes that pretraining never saw (`split=dissimilar`: T-shirt/top, Pullover, Coat, Shirt,
Sneaker; `split=related`: Trouser, Coat, Shirt, Sneaker, Ankle boot; see pretrain.py), with 10 or
60 training examples per class (50 or 300 images), evaluated on all 5,000 test images of those
classes. Every arm is LeNet-5 with batch norm, flips, Adam 1e-3 with cosine decay, batch 25 and
the same 300 steps; only the start and what is trained differ:

- `scratch`: a fresh initialization;
- `finetune`: every layer from the pretrained run (`pretrain.py`), a new output layer
  (`finetune.reinit=Dense_2`), all trained, batch-norm statistics updated;
- `finetune_bn_frozen`: the same with batch norm in inference mode (running statistics kept);
- `linear_probe`: only the new output layer trained, everything else frozen (batch norm too).

Five seeds per arm (the seed sets the new layer's initialization and the batch order; the
pretrained run is one, seed 0). Arguments: pretrained=DIR (the pretraining workdir of the same
split), split=dissimilar|related, smoke (tests: 4 steps, one seed). Measured (README.md): on
the related split fine-tuning beats scratch by +2.8 points with 50 images (0.8037 vs 0.7754) and
+1.6 with 300 (0.9044 vs 0.8886); on the dissimilar split it does not (within +-1 point).
"""

import os

import ml_collections

from cnnjax.config_base import parse_arg

# Target classes of each split of pretrain.py (the five classes pretraining did not see).
TARGET_CLASSES = {"dissimilar": "0,2,4,6,7", "related": "1,4,6,7,9"}
EVERYTHING_BUT_THE_HEAD = "^(?!Dense_2/)"  # parameter paths not under the output layer


def get_config(arg: str | None = None):
    args = parse_arg(arg, pretrained="runs/finetune_pretrain", split="dissimilar", smoke=False)
    if args.split not in TARGET_CLASSES:
        raise ValueError(f"split={args.split!r}: use one of {', '.join(TARGET_CLASSES)}")
    pretrained = os.path.abspath(args.pretrained)  # runs resolve it from their own workdirs
    sweep = ml_collections.ConfigDict()
    sweep.base = "../../configs/lenet5_fashion_mnist.py"
    sweep.overrides = {
        "data": {"classes": TARGET_CLASSES[args.split], "batch_size": 25},
        "optimizer": {"learning_rate": 1e-3},
        "train": {"steps": 300, "epochs": 1000, "log_every_steps": 25},
        "finetune": {"reinit": "Dense_2"},
    }
    sweep.axes = [
        {
            "_name": "method",
            "_labels": ("scratch", "finetune", "finetune_bn_frozen", "linear_probe"),
            "init_from": ("", pretrained, pretrained, pretrained),  # "": no pretrained start
            "finetune.batch_norm": ("update", "update", "frozen", "frozen"),
            "finetune.freeze": ("", "", "", EVERYTHING_BUT_THE_HEAD),
        },
        {
            "_name": "per_class",
            "_labels": ("10", "60"),
            "data.train_examples_per_class": (10, 60),
            # An evaluation every 50 or 60 steps: 25 and 5 epochs of 2 and 12 steps.
            "train.eval_every_epochs": (25, 5),
        },
    ]
    sweep.seeds = (0, 1, 2, 3, 4)
    if args.smoke:
        sweep.overrides["data"]["eval_split"] = "test[:500]"
        sweep.overrides["train"]["steps"] = 4
        sweep.seeds = (0,)
    sweep.report = {
        "metrics": ("test_accuracy", "test_loss", "train_accuracy"),
        "curves": [("test", "accuracy")],
    }
    return sweep

"""Pretraining for the fine-tuning study: LeNet-5 on five Fashion-MNIST classes.

    cnnjax train --config=experiments/finetune/pretrain.py --workdir=runs/finetune_pretrain

The default recipe (LeNet-5 + batch norm, flips, Adam 2e-3 cosine, batch 128) for 8 epochs on
the 30,000 training images of five classes, evaluated on the 5,000 test images of those classes.
The other five classes are the fine-tuning task of `config.py` (same `split=` argument):

- `:split=dissimilar` (default): pretrain on Trouser, Dress, Sandal, Bag, Ankle boot; the target
  is T-shirt/top, Pullover, Coat, Shirt, Sneaker (the four garments models confuse most);
- `:split=related`: pretrain on T-shirt/top, Pullover, Dress, Sandal, Bag; the target is
  Trouser, Coat, Shirt, Sneaker, Ankle boot.

Measured (2 CPU cores, shared with other work): see README.md. `:smoke` trains 20 steps on
1,280 images (tests).
"""

import os

import ml_collections

from cnnjax.config_base import parse_arg
from cnnjax.config_loader import load_config

# Two ways to cut Fashion-MNIST's ten classes into pretraining and target halves (class ids):
# "dissimilar" leaves all four upper-body garments to the target, so pretraining sees none of
# what tells them apart; "related" pretrains on T-shirt/top, Pullover, Dress, Sandal and Bag, whose
# features (sleeves, collars, footwear shapes) bear on the target's Coat vs Shirt and Sneaker vs
# Ankle boot.
SPLITS = {
    # (pretraining classes, target classes)
    "dissimilar": ("1,3,5,8,9", "0,2,4,6,7"),
    "related": ("0,2,3,5,8", "1,4,6,7,9"),
}
DEFAULT_RECIPE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "lenet5_fashion_mnist.py"
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, split="dissimilar", epochs=8, smoke=False)
    if args.split not in SPLITS:
        raise ValueError(f"split={args.split!r}: use one of {', '.join(SPLITS)}")
    config = load_config(DEFAULT_RECIPE + (":smoke" if args.smoke else ""))
    config.data.classes = SPLITS[args.split][0]
    config.train.epochs = 1 if args.smoke else args.epochs
    return config

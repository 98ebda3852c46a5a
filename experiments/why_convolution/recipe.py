"""The training recipe that every arm of the "why convolution" study shares (config.py).

    cnnjax train --config=experiments/why_convolution/recipe.py --workdir=runs/why_conv_lenet5
    cnnjax train --config=experiments/why_convolution/recipe.py \\
        --config.model.name=mlp --workdir=runs/why_conv_mlp

LeNet-5 by default; config.py sweeps model.name over logistic, mlp, lenet5_local and lenet5,
which is why model.options stays empty here (the dense family takes no pooling option). What
the arms share, so that the architecture is the only difference: no normalization, dropout,
weight decay or augmentation (the shift curves measure the architecture, not what flips and
crops taught it), Adam 1e-3 with cosine decay, batch 128, the same number of epochs.

Arguments: epochs (default 5, see config.py for why), smoke (a few steps on 256 examples).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, epochs=5, smoke=False)
    config = get_base_config()
    config.model.name = "lenet5"
    config.model.normalization = "none"
    config.model.dropout_rate = 0.0
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.data.augment.horizontal_flip = False
    config.data.augment.random_crop_padding = 0
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.weight_decay = 0.0
    config.train.epochs = args.epochs
    config.train.log_every_steps = 100
    if args.smoke:
        config.data.train_split = "train[:256]"
        config.data.eval_split = "test[:200]"
        config.train.epochs = 2
        config.train.log_every_steps = 1
    return config

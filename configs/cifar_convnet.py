"""The course's small CIFAR-10 ConvNet (conv 5x5 16 / 20 / 20, pool 2x2, softmax).

    cnnjax train --config=configs/cifar_convnet.py --workdir=runs/cifar_convnet
    cnnjax train --config=configs/cifar_convnet.py:dataset=fashion_mnist --workdir=runs/cc_fm

Reaches about 80% test accuracy on CIFAR-10 (the ConvNetJS demo's figure; unmeasured here: no
CIFAR-10 offline); `:dataset=fashion_mnist` reaches 0.914 in about 2 minutes on 2 CPU cores
(0.9143 in 118 s; benchmarks/results/recipes.json).

CIFAR-10 needs TFDS to download and prepare it once (online, `pip install -e '.[tf]'` for
TFDS's stock builder; add --config.data.download=True). The `dataset=fashion_mnist` variant
runs offline (28x28 inputs end as 3x3x20 features).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, dataset="cifar10", smoke=False)
    config = get_base_config()
    config.model.name = "cifar_convnet"
    config.data.name = args.dataset
    config.data.batch_size = 128
    config.data.augment.horizontal_flip = True
    if args.dataset == "cifar10":
        config.data.augment.random_crop_padding = 4
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "cosine"
    config.train.epochs = 30 if args.dataset == "cifar10" else 15
    if args.smoke:
        config.data.train_split = "train[:1024]"
        config.data.eval_split = "test[:256]"
        config.train.epochs = 1
    return config

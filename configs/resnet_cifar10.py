"""CIFAR ResNets (He et al. 2016) and Wide ResNets on CIFAR-10.

    cnnjax train --config=configs/resnet_cifar10.py:model=resnet20 --workdir=runs/resnet20
    cnnjax train --config=configs/resnet_cifar10.py:model=wrn28_10 --workdir=runs/wrn28_10

He et al.'s setting: SGD momentum 0.9 (Nesterov here), learning rate 0.1, weight decay 1e-4
(5e-4 for WRNs), batch 128, crop 4 + flip; 160 epochs with cosine decay instead of the paper's
steps at 32k/48k iterations. Expected test error, from the papers: ResNet-20 8.75%, ResNet-56
6.97%, ResNet-110 6.43%; WRN-28-10 about 4.0%. Unmeasured here (no CIFAR-10 offline; needs
--config.data.download=True once, online).
"""

from cnnjax.config_base import get_base_config, parse_arg, use_cifar10


def get_config(arg: str | None = None):
    args = parse_arg(arg, model="resnet20", smoke=False)
    config = use_cifar10(get_base_config(), smoke=args.smoke)
    config.model.name = args.model
    config.model.normalization = "batch"
    if args.model.startswith("resnet"):
        config.optimizer.weight_decay = 1e-4
    else:
        config.optimizer.weight_decay = 5e-4
        config.model.dropout_rate = 0.3  # the paper's dropout between a block's convolutions
        config.train.epochs = 200
    return config

"""AlexNet on CIFAR-10 (the 64-192-384-256-256 form; `:paper` for the paper's net with LRN).

    cnnjax train --config=configs/alexnet_cifar10.py --workdir=runs/alexnet_cifar10
    cnnjax train --config=configs/alexnet_cifar10.py:paper --workdir=runs/alexnet_paper_cifar10

AlexNet was designed for 224x224 ImageNet crops: on 32x32 inputs its stride-4 first layer leaves
8x8 maps, so expect well below the CIFAR ResNets, about 75-80% (unmeasured here: no CIFAR-10
offline). The ImageNet recipe (62.5% top-1 / 15.3% top-5 error in the paper) waits for the
ImageNet input pipeline. Needs --config.data.download=True once, online.
"""

from cnnjax.config_base import get_base_config, parse_arg, use_cifar10


def get_config(arg: str | None = None):
    args = parse_arg(arg, paper=False, smoke=False)
    config = use_cifar10(get_base_config(), smoke=args.smoke)
    config.model.name = "alexnet_paper" if args.paper else "alexnet"
    config.model.dropout_rate = 0.5
    config.model.options.hidden_units = 1024
    # The switches of the paper's ablations and of a small AlexNet, declared so that sweeps can
    # set them (experiments/alexnet_design): LRN after conv1 and conv2 (the paper's net has it)
    # and its alpha, 3x3 or 2x2 stride-2 max-pooling, the filter-count factor, zero-padding of
    # smaller inputs (0: none).
    config.model.options.lrn = args.paper
    config.model.options.lrn_alpha = 1e-4
    config.model.options.pool_window = 3
    config.model.options.pool_stride = 2
    config.model.options.width_multiplier = 1.0
    config.model.options.input_size = 0
    config.optimizer.learning_rate = 0.02  # no normalization layers: 0.1 diverges early
    return config

"""VGG with batch norm on CIFAR-10.

    cnnjax train --config=configs/vgg_cifar10.py:depth=16 --workdir=runs/vgg16_bn_cifar10

32x32 inputs leave 1x1x512 after the five pools; the adaptive 7x7 pool of the ImageNet head
repeats it, so this recipe narrows the classifier to 512 units (`hidden_units`), as the common
CIFAR VGGs do. Expected: about 93-94% test accuracy for VGG-16-BN in 160 epochs (the usual
figure of CIFAR VGG re-implementations); unmeasured here (no CIFAR-10 offline; about 10 GPU
minutes, many CPU hours). Needs --config.data.download=True once, online.
"""

from cnnjax.config_base import get_base_config, parse_arg, use_cifar10


def get_config(arg: str | None = None):
    args = parse_arg(arg, depth=16, smoke=False)
    config = use_cifar10(get_base_config(), smoke=args.smoke)
    config.model.name = f"vgg{args.depth}_bn"
    config.model.normalization = "batch"
    config.model.options.hidden_units = 512
    return config

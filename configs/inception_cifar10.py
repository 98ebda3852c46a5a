"""GoogLeNet and Inception v3 on CIFAR-10, images upscaled by an integer factor.

    cnnjax train --config=configs/inception_cifar10.py:model=googlenet --workdir=runs/googlenet
    cnnjax train --config=configs/inception_cifar10.py:model=inception_v3 --workdir=runs/incv3

Both nets were designed for 224/299-pixel ImageNet crops; CIFAR-10's 32x32 images are upscaled
x3 (nearest neighbour, to 96x96: Inception v3 needs at least 75x75) so the stems' downsampling
leaves usable grids. Expected: about 93-95% test accuracy, the figure of common CIFAR GoogLeNet
re-implementations; unmeasured here (no CIFAR-10 offline; GPU-hours on a CPU). The paper
figures are ImageNet's: GoogLeNet 6.67% top-5 error, Inception v3 5.6% (single crop), which wait
for the ImageNet input pipeline. Needs --config.data.download=True once, online.
"""

from cnnjax.config_base import get_base_config, parse_arg, use_cifar10


def get_config(arg: str | None = None):
    args = parse_arg(arg, model="googlenet", smoke=False)
    config = use_cifar10(get_base_config(), smoke=args.smoke)
    config.model.name = args.model
    config.model.normalization = "batch"
    config.data.augment.upscale = 3
    config.train.epochs = 100
    return config

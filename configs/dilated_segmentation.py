"""The dilated-convolution context network (Yu & Koltun 2016) on the segmentation task.

    cnnjax train --config=configs/dilated_segmentation.py --workdir=runs/dilated_segmentation

Reaches pixel accuracy 0.866 and mean IoU 0.130 on the 10,000 test canvases after 3 epochs, in
about 3.5 minutes on 2 CPU cores (201 s; benchmarks/results/recipes.json); U-Net at 3 epochs:
0.861 and 0.131.

Same task as configs/unet_segmentation.py (two Fashion-MNIST items on a 64x64 canvas, 11
per-pixel classes). Model `dilated_context` with 16 features (16,859 parameters): a 3x3
front-end, the basic context module (3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1: a
67-pixel receptive field, more than the canvas, at full resolution), a 1x1 head. Adam 2e-3,
cosine, batch 64.
"""

from cnnjax.config_base import get_base_config, parse_arg, shrink_for_smoke, use_fashion_mnist_task


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    config = use_fashion_mnist_task(get_base_config(), "segmentation", train_examples=8000)
    config.model.name = "dilated_context"
    config.model.normalization = "batch"
    config.model.options.features = 16
    config.train.epochs = 3
    return shrink_for_smoke(config) if args.smoke else config

"""U-Net on a segmentation task built from Fashion-MNIST (offline).

    cnnjax train --config=configs/unet_segmentation.py --workdir=runs/unet_segmentation

Reaches pixel accuracy 0.900 and mean IoU 0.380 on the 10,000 test canvases after 8 epochs, in
about 7 minutes on 2 CPU cores (424 s; the IoU by epoch and a 3-epoch run are in
benchmarks/results/recipes.json).

Task (cnnjax/data/tasks.py, `segmentation`): two Fashion-MNIST items on a 64x64 black canvas,
per-pixel labels background + 10 classes. Model `unet_small` with base 8 features (3 poolings,
batch norm; 121,098 parameters). Adam 2e-3 with cosine decay, batch 64, 8,000 training
canvases. Background is about 80% of the pixels; most of the remaining error is telling the
item classes apart pixel by pixel.
"""

from cnnjax.config_base import get_base_config, parse_arg, shrink_for_smoke, use_fashion_mnist_task


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    config = use_fashion_mnist_task(get_base_config(), "segmentation", train_examples=8000)
    config.model.name = "unet_small"
    config.model.normalization = "batch"
    # Base 8 features (not 16): a quarter of the MACs, ~4x the images/s on 2 CPU cores.
    config.model.options.base_features = 8
    config.train.epochs = 8
    return shrink_for_smoke(config) if args.smoke else config

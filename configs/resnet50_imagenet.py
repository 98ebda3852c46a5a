"""ResNet-50 on ImageNet (ILSVRC 2012): the standard 90-100 epoch recipe, and its bf16 variant.

    cnnjax train --config=configs/resnet50_imagenet.py --workdir=runs/resnet50_imagenet
    cnnjax train --config=configs/resnet50_imagenet.py:bf16 --workdir=runs/resnet50_bf16
    cnnjax train --config=configs/resnet50_imagenet.py:dataset=imagenette,epochs=40 ...
    cnnjax train --config=configs/resnet50_imagenet.py:dataset=imagefolder \\
        --config.data.image_folder=/data/my_images --workdir=runs/r50_folder  # DIR/train, DIR/val

ResNet-50 v1.5 (stride 2 in the 3x3 convolutions, 25,557,032 parameters), batch 1024 split over
all devices, SGD with Nesterov momentum 0.9, peak learning rate 0.4 (0.1 x 1024 / 256) after 5
warm-up epochs then cosine decay, weight decay 1e-4 (not on biases and batch-norm scales),
100 epochs; random-resized 224 crops and flips for training, resize 256 + center 224 crop for
evaluation; each residual block's last batch-norm scale starts at zero (Goyal et al. 2017, as
the Flax example: `model.options.zero_init_residual`). Evaluation batches are padded to a
multiple of the device count, so the recipe runs on any slice (8, 16, 32, ... devices).
This is the setting of the Flax ImageNet example, which reports 76.3% top-1 in
4.4 h on a TPU v3-8 (about 2,000 images/s per chip); NVIDIA's PyTorch ResNet-50 trains at about
2,470 images/s per A100 with AMP. Expected here: about 76% top-1 (fp32 and bf16 alike).
Unmeasured in this repository: no ImageNet and no accelerator were available.

Data: `imagenet2012` needs TFDS's manual download (ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in ~/tensorflow_datasets/downloads/manual, then one run with
`--config.data.download=True` after `pip install -e '.[tf]'` to prepare it); `imagenette`
(10 classes, 9,469 training images) downloads by itself with download=True. Evaluation uses the
`validation` split.

Arguments (`file.py:key=value,...`): dataset=imagenet2012|imagenette|imagefolder, bf16,
epochs=100, batch=1024, smoke (a few steps at 64x64 on a tiny image folder, for tests).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, dataset="imagenet2012", bf16=False, epochs=100, batch=1024, smoke=False)
    config = get_base_config()
    config.model.name = "resnet50"
    config.model.normalization = "batch"
    # As the Flax ImageNet example: every residual block starts as the identity.
    config.model.options.zero_init_residual = True
    config.data.name = args.dataset
    config.data.train_split = "train"
    config.data.eval_split = "val" if args.dataset == "imagefolder" else "validation"
    config.data.batch_size = args.batch
    config.data.eval_batch_size = min(args.batch, 1000)
    config.data.image_size = 224
    config.data.workers = 16
    config.optimizer.name = "nesterov"
    config.optimizer.momentum = 0.9
    config.optimizer.learning_rate = 0.1 * args.batch / 256
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.weight_decay = 1e-4
    config.train.epochs = args.epochs
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 1000
    if args.bf16:
        config.train.compute_dtype = "bfloat16"
    if args.smoke:
        config.data.batch_size = 8
        config.data.eval_batch_size = 8
        config.data.image_size = 64
        config.data.workers = 2
        config.optimizer.warmup_epochs = 0.0
        config.train.epochs = 1
        config.train.log_every_steps = 1
    return config

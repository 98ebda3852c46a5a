"""Fine-tuning published ImageNet weights on Fashion-MNIST: "pretrain on ImageNet, fine-tune".

    cnnjax import-weights --from=torchvision:resnet18 --file=resnet18-f37072fd.pth \\
        --workdir=runs/resnet18_imagenet
    cnnjax train --config=configs/finetune_imagenet_weights.py \\
        --config.init_from=runs/resnet18_imagenet --workdir=runs/resnet18_fashion_mnist

The 28x28 gray images are upscaled 8x to the 224x224 the weights were trained at; the first
convolution's RGB kernel is summed over its input channels for the one gray channel
(cnnjax/train/finetune.py), the 1000-class head does not fit the 10 classes and starts fresh
at the full rate, every other layer trains at a tenth of it. Unmeasured: one epoch of ResNet-18
at 224x224 is about 5.5 TFLOPs of training, hours on 2 CPU cores (a GPU's minutes).
Variants: `:model=resnet50` (import torchvision:resnet50 first); `:smoke` (56x56 inputs, 3
steps, for the tests).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, model="resnet18", smoke=False)
    config = get_base_config()
    config.model.name = args.model
    config.model.normalization = "batch"
    config.data.name = "fashion_mnist"
    config.data.augment.upscale = 8  # 28 -> 224
    config.data.augment.horizontal_flip = True
    config.data.batch_size = 64
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.01
    config.optimizer.schedule = "cosine"
    config.optimizer.weight_decay = 1e-4
    config.finetune.lr_multipliers = "ConvBlock=0.1"  # the head (Dense_0) at the full rate
    config.train.epochs = 3
    if args.smoke:
        config.data.augment.upscale = 2
        config.data.train_split = "train[:256]"
        config.data.eval_split = "test[:32]"
        config.data.batch_size = 16
        config.data.eval_batch_size = 16
        config.train.epochs = 1
        config.train.steps = 3
    return config

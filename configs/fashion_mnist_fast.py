"""Fashion-MNIST time-to-accuracy on CPU: the fastest path to >= 0.93 test accuracy we found.

    cnnjax train --config=configs/fashion_mnist_fast.py --workdir=runs/fashion_mnist_fast
    cnnjax train --config=configs/fashion_mnist_fast.py:stretch --workdir=runs/fashion_mnist_stretch

Reaches test accuracy 0.9307 in 93 s on 2 Intel Xeon cores (median of 3 whole commands,
2026-12-01; the three-convolution version before it took 151 s there for 0.9312, and its
16-epoch form 193 s there and 152 s on 2 AMD EPYC cores). `:stretch` reaches 0.94: see below.
Dated runs, other machines and the tuning runs behind these settings:
benchmarks/results/recipes.json.

fast_convnet (cnnjax/models/small_convnets.py): 2x2 space-to-depth (28x28x1 -> 14x14x4), a
3x3 conv of 32, 2x2 max pool, a 3x3 conv of 64 (batch norm, ReLU), flatten, dense 256 with
batch norm, dropout 0.1, dense 10; 0.83M parameters. Adam 3e-3 with 0.3 epochs of warm-up and
cosine decay, label smoothing 0.1, batch 256, random crops (1-pixel padding) and horizontal
flips, 12 epochs, evaluated once at the end on each test image and its mirror (softmax
averaged, `train.eval_mirrored`). Space-to-depth keeps every convolution at 14x14 or below:
on XLA:CPU, layers at 28x28 with few channels cost far more per multiply-accumulate. A second
64-wide convolution held half the multiply-adds for +0.05 points (0.9312 in 151 s).
The margin over 0.93 is within run-to-run noise: 13 epochs gave 0.9293.
Variant `:stretch`: widths 64 and 128-128 (1.83M parameters), dropout 0.2, 2-pixel crops, 30
epochs: 0.9417 in 867 s (14.5 minutes; median of 3 whole commands on the same cores, 863-875 s).
Anchors: TensorFlow tutorial's 2-conv net 0.916; the default LeNet-5 recipe about 0.913;
a ResNet-18 0.949 with GPU budgets.
Variant `:smoke` trains 2 epochs on 2,560 examples (a few seconds; used by the tests).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False, stretch=False)
    config = get_base_config()
    config.model.name = "fast_convnet"
    config.model.activation = "relu"
    config.model.normalization = "batch"
    config.model.dropout_rate = 0.1
    config.model.options.stages = ((32,), (64,))
    config.model.options.head = "flatten"
    config.model.options.hidden_units = 256
    config.data.name = "fashion_mnist"
    config.data.batch_size = 256
    config.data.augment.horizontal_flip = True
    config.data.augment.random_crop_padding = 1
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_epochs = 0.3
    config.optimizer.label_smoothing = 0.1
    config.train.epochs = 12
    config.train.eval_every_epochs = 12  # evaluations cost time: one, at the end
    # Each test image and its mirror, softmax averaged (AlexNet's test-time augmentation):
    # +0.36 points at 12 epochs on the three-convolution form (0.9276 -> 0.9312), for the price
    # of a second forward pass.
    config.train.eval_mirrored = True
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 1_000_000  # checkpoints at evaluations only
    if args.stretch:
        # Twice the widths (4x the multiply-adds), crops of 2 pixels, more dropout, 30 epochs.
        config.model.options.stages = ((64,), (128, 128))
        config.model.dropout_rate = 0.2
        config.data.augment.random_crop_padding = 2
        config.train.epochs = 30
        config.train.eval_every_epochs = 10
    if args.smoke:
        config.data.train_split = "train[:2560]"
        config.data.eval_split = "test[:1000]"
        config.train.epochs = 2
        config.train.eval_every_epochs = 2
        config.train.log_every_steps = 5
    return config

"""Fashion-MNIST time-to-accuracy on CPU: the fastest path to >= 0.93 test accuracy we found.

    cnnjax train --config=configs/fashion_mnist_fast.py --workdir=runs/fashion_mnist_fast

Reaches test accuracy 0.931 in about 2.5 minutes on 2 AMD EPYC cores with AVX-512 (0.9310,
median 152 s over 3 runs). Dated runs, other machines and the tuning runs behind these
settings: benchmarks/results/recipes.json.

fast_convnet (cnnjax/models/small_convnets.py): 2x2 space-to-depth (28x28x1 -> 14x14x4), a
3x3 conv of 32, 2x2 max pool, two 3x3 convs of 64 (batch norm, ReLU), flatten, dense 256 with
batch norm, dropout 0.1, dense 10; 0.86M parameters. Adam 3e-3 with 0.3 epochs of warm-up and
cosine decay, label smoothing 0.1, batch 256, random crops (1-pixel padding) and horizontal
flips, 16 epochs, evaluated every 4. Space-to-depth keeps every convolution at 14x14 or below:
on XLA:CPU, layers at 28x28 with few channels cost far more per multiply-accumulate.
Anchors: TensorFlow tutorial's 2-conv net 0.916; the default LeNet-5 recipe about 0.913.
Variant `:smoke` trains 2 epochs on 2,560 examples (a few seconds; used by the tests).
"""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    config = get_base_config()
    config.model.name = "fast_convnet"
    config.model.activation = "relu"
    config.model.normalization = "batch"
    config.model.dropout_rate = 0.1
    config.model.options.stages = ((32,), (64, 64))
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
    config.train.epochs = 16
    config.train.eval_every_epochs = 4  # evaluations cost time: 4 of them
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 1_000_000  # checkpoints at evaluations only
    if args.smoke:
        config.data.train_split = "train[:2560]"
        config.data.eval_split = "test[:1000]"
        config.train.epochs = 2
        config.train.eval_every_epochs = 2
        config.train.log_every_steps = 5
    return config

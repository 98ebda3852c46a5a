"""Fashion-MNIST time-to-accuracy recipe (draft)."""

from cnnjax.config_base import get_base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    config = get_base_config()
    config.model.name = "fast_convnet"
    config.model.activation = "relu"
    config.model.normalization = "batch"
    config.model.options.stages = ((32,), (64, 64))
    config.model.options.head = "flatten"
    config.data.name = "fashion_mnist"
    config.data.batch_size = 256
    config.data.augment.horizontal_flip = True
    config.data.augment.random_crop_padding = 2
    config.optimizer.name = "nesterov"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_epochs = 0.5
    config.optimizer.label_smoothing = 0.1
    config.train.epochs = 6
    config.train.eval_every_epochs = config.train.epochs
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 1_000_000
    if args.smoke:
        config.data.train_split = "train[:2560]"
        config.data.eval_split = "test[:1000]"
        config.train.epochs = 2
        config.train.eval_every_epochs = 2
        config.train.log_every_steps = 5
    return config

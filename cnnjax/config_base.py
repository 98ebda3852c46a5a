"""Shared defaults of every recipe in `configs/`, and the `file.py:key=value` argument parser.

Recipes start from `get_base_config()` and change what differs; every key that later issues and
sweeps rely on is defined here, so `--config.x=y` overrides never meet a missing key.
"""

from __future__ import annotations

import ml_collections

from cnnjax.errors import UserError


def get_base_config() -> ml_collections.ConfigDict:
    """The defaults: LeNet-5 on Fashion-MNIST with Adam; recipes override what they change."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "lenet5"
    config.model.activation = "relu"
    config.model.normalization = "none"
    config.model.dropout_rate = 0.0
    # Further family-specific options (e.g. {"pooling": "average"}) passed to models.create.
    config.model.options = ml_collections.ConfigDict()
    # Block convolutions and pooling by reshape (LayerOptions, cnnjax/models/layers.py): the same
    # function in forms XLA:CPU runs faster, but other float32 roundings, so a config key (part
    # of the run's math and of what jit caches) rather than a switch read while tracing. None:
    # on the CPU backend only (they were tuned and measured on XLA:CPU); config.json records
    # the resolved True or False.
    config.model.fast_paths = ml_collections.config_dict.placeholder(bool)

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"
    # classification, or a task built from the images: rows (1-D), segmentation, motion (3-D)
    config.data.task = "classification"
    config.data.train_split = "train"  # TFDS split strings: e.g. "train[:10%]" for a subset
    config.data.eval_split = "test"
    config.data.batch_size = 128
    config.data.eval_batch_size = 1000
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.random_crop_padding = 0  # pixels; 0 disables random crops
    config.data.augment.horizontal_flip = False
    config.data.augment.normalize = True  # per-channel mean/std of the training split
    config.data.augment.upscale = 1  # integer nearest-neighbour upscaling (train and eval)
    # AlexNet's "fancy PCA" colour augmentation (Krizhevsky et al. 2012): per training image, the
    # offset sum_i p_i alpha_i lambda_i, alpha_i ~ N(0, pca_color_std), with (lambda_i, p_i) the
    # eigen-decomposition of the training split's pixel colour covariance of x / 255 (ImageNet's
    # published one for streaming datasets); added in whole levels of 255. AlexNet: 0.1; 0: off.
    config.data.augment.pca_color_std = 0.0
    # TFDS data directory; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    # Folder of raw source files for offline preparation (the IDX .gz files of Fashion-MNIST);
    # None means $CNNJAX_DATA_SOURCE_DIR or /usr/share/datasets/fashion-mnist.
    config.data.source_dir = ml_collections.config_dict.placeholder(str)
    config.data.download = False  # let TFDS download the dataset when it is missing (online)
    # Class subsets (transfer studies): "1,3,5" keeps only these class ids, relabeled 0..k-1 in
    # this order, in both splits; "" keeps every class.
    config.data.classes = ""
    config.data.train_examples_per_class = 0  # > 0: the first n training examples of each class
    # One fixed shuffle of the pixel positions, drawn from this seed, applied to every training
    # and evaluation image (the course's "shuffled pixels": a dense net does not care, a ConvNet
    # loses its locality prior); the shuffle of `cnnjax eval --permute_pixels=SEED`. -1: off.
    config.data.pixel_permutation_seed = -1
    # ImageNet-style datasets (imagenet2012, imagenette, imagefolder) are decoded per batch:
    config.data.image_size = 224  # random-resized crops for training, center crops for eval
    config.data.image_folder = ml_collections.config_dict.placeholder(str)  # imagefolder: DIR
    config.data.workers = 8  # decoding threads (or processes)
    # Batches (training and evaluation) decoded by `workers` processes writing into shared
    # memory, not threads: the same bytes; no GIL ceiling on many-core hosts (threads topped out
    # near 5.5k images/s on 16), a wash on 2 cores (benchmarks/README.md).
    config.data.worker_processes = False
    # Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when the crop keeps at least
    # image_size pixels each way there: the same crops, pixels ~1 level (of 255) from a full
    # decode on average; 1.5-2x less CPU on 1600x1200 photos, no change on 500x375 ones.
    config.data.jpeg_draft = True
    # Evaluation resizes the shorter side to eval_resize, then crops image_size: 0 means
    # round(image_size / 0.875) (256 for 224), the ResNet protocol; imported weights reach their
    # published accuracy only with the resize they were evaluated with (torchvision's ResNet-50
    # V2: 232; Inception v3: 342 for 299), cnnjax.data.image_decoding.torchvision_eval_settings.
    config.data.eval_resize = 0
    # Pillow's filter for the training and evaluation resizes: "bilinear" or "bicubic" (what
    # some torchvision and most timm weights were evaluated with).
    config.data.interpolation = "bilinear"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # sgd, momentum, nesterov, adam, adamw, rmsprop
    config.optimizer.learning_rate = 1e-3  # peak learning rate of the schedule
    config.optimizer.momentum = 0.9  # momentum / nesterov / rmsprop momentum
    config.optimizer.weight_decay = 0.0  # never applied to biases or normalization scales
    config.optimizer.schedule = "constant"  # constant, cosine, warmup_cosine, step
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.decay_epochs = (30, 60, 80)  # step schedule: boundaries in epochs
    config.optimizer.decay_factor = 0.1  # step schedule: factor at each boundary
    # A step schedule whose factor is > 1 raises the learning rate at each boundary, which is
    # almost always a typo (10 for 0.1): refused unless asked for (e.g. to provoke a divergence).
    config.optimizer.allow_lr_increase = False
    config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping by global norm
    config.optimizer.label_smoothing = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 10
    config.train.steps = ml_collections.config_dict.placeholder(int)  # optional cap on steps
    config.train.log_every_steps = 50
    config.train.eval_every_epochs = 1
    config.train.checkpoint_every_steps = 500
    config.train.keep_best_checkpoints = 2  # best by test accuracy, besides the latest
    # Mixed precision: "bfloat16" computes forward and backward passes in bf16 while parameters,
    # gradients and optimizer state stay float32.
    config.train.compute_dtype = "float32"
    # float16 (GPUs without bfloat16: V100, T4) trains with dynamic loss scaling: the loss is
    # multiplied by the scale before the backward pass; a step whose gradients overflow is
    # skipped and halves the scale, `loss_scale_period` finite steps in a row double it.
    config.train.loss_scale_initial = 2.0**15
    config.train.loss_scale_period = 2000
    config.train.grad_accum_steps = 1  # micro-batches per step (data.batch_size is the total)
    config.train.ema_decay = 0.0  # > 0: keep an EMA of the weights and evaluate it too
    # Evaluations (during training and `cnnjax eval`) average the softmax of each test image and
    # of its left-right mirror: AlexNet's test-time augmentation, for images [H, W, C] of a
    # classification task; `cnnjax eval --crops=2` does the same afterwards for any run.
    config.train.eval_mirrored = False
    # `cnnjax train` keeps compiled steps here for later runs of the same program ("" disables);
    # the Python API leaves the process-wide cache alone (fast_paths.enable_compilation_cache).
    # ~/.cache stands for $XDG_CACHE_HOME when that is set (the test suite keeps its own).
    config.train.compilation_cache_dir = "~/.cache/cnnjax/xla"

    # Fine-tuning: start from the weights of another run instead of a fresh initialization.
    config.init_from = ml_collections.config_dict.placeholder(str)  # that run's workdir
    config.finetune = ml_collections.ConfigDict()
    config.finetune.checkpoint = "best"  # of init_from: best, latest or a step
    # Regular expressions searched in parameter paths such as "Dense_2/kernel" (`|` for several):
    config.finetune.reinit = ""  # start fresh although the shapes match (a head for new classes)
    config.finetune.freeze = ""  # kept fixed: no update, no weight decay
    # Learning-rate multipliers per group, "regex=factor;regex=factor" (first match wins), e.g.
    # "ConvBlock=0.1" trains the convolutions at a tenth of the schedule's rate.
    config.finetune.lr_multipliers = ""
    config.finetune.batch_norm = "update"  # or "frozen": running statistics used, never updated

    # Data parallelism over a device mesh (cnnjax/parallel): the batch is split over devices.
    config.parallel = ml_collections.ConfigDict()
    config.parallel.num_devices = 0  # 0: every device of every process
    config.parallel.step = "jit"  # jit (sharded jax.jit) or shard_map (explicit per device)
    config.parallel.batch_norm = "sync"  # shard_map step: sync (global) or ghost (per device)
    return config


_TRUE_WORDS = ("", "1", "true", "yes")
_FALSE_WORDS = ("0", "false", "no")


def parse_arg(arg: str | None, **defaults):
    """Parses the `key=value,key2=value2` argument of `file.py:arg` into typed values.

    Each key must be one of `defaults`; a value is converted to the type of its default
    (`smoke` alone means `smoke=True`). Returns an `ml_collections.ConfigDict`.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise UserError(
                f"unknown config argument {key!r}: this config takes {', '.join(defaults)}"
            )
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in _TRUE_WORDS + _FALSE_WORDS:
                # A typo must not pass as False: `smoke=Ture` would start the full study.
                raise UserError(
                    f"config argument {key}={value!r} is not a bool: give {key} or {key}=true / "
                    f"{key}=false"
                )
            parsed[key] = value.lower() in _TRUE_WORDS
        elif default is None:
            parsed[key] = value
        else:
            try:
                parsed[key] = type(default)(value)
            except ValueError:
                raise UserError(
                    f"config argument {key}={value!r} is not a {type(default).__name__}"
                ) from None
    return parsed


def use_cifar10(config: ml_collections.ConfigDict, *, smoke: bool) -> ml_collections.ConfigDict:
    """The CIFAR-10 setting shared by the family recipes: crop 4 + flip, SGD-Nesterov 0.1,
    weight decay 5e-4, batch 128, warmup + cosine (He et al. 2016 / the usual CIFAR recipe).

    CIFAR-10 is prepared by TFDS's stock builder: run once online with
    --config.data.download=True after `pip install -e '.[tf]'`. `smoke` shrinks the run to
    seconds on 1,024 examples (needs the dataset too).
    """
    config.data.name = "cifar10"
    config.data.batch_size = 128
    config.data.augment.random_crop_padding = 4
    config.data.augment.horizontal_flip = True
    config.optimizer.name = "nesterov"
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_epochs = 1.0
    config.train.epochs = 160
    return shrink_for_smoke(config, train_examples=1024, eval_examples=256) if smoke else config


def shrink_for_smoke(
    config: ml_collections.ConfigDict, *, train_examples: int = 256, eval_examples: int = 128
) -> ml_collections.ConfigDict:
    """The `:smoke` variant of a recipe: one epoch on a few examples, for tests (seconds)."""
    config.data.train_split = f"train[:{train_examples}]"
    config.data.eval_split = f"test[:{eval_examples}]"
    config.train.epochs = 1
    return config


def use_fashion_mnist_task(
    config: ml_collections.ConfigDict, task: str, *, train_examples: int | None = None
) -> ml_collections.ConfigDict:
    """A task built from Fashion-MNIST (cnnjax/data/tasks.py) with the task recipes' optimizer:
    Adam 2e-3, cosine decay, batch 64, evaluation in batches of 250."""
    config.data.name = "fashion_mnist"
    config.data.task = task
    if train_examples:
        config.data.train_split = f"train[:{train_examples}]"
    config.data.batch_size = 64
    config.data.eval_batch_size = 250
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "cosine"
    config.train.log_every_steps = 20
    return config


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

"""Every flag of the `cnnjax` command line (cnnjax/cli.py), defined once on import of the
command line: the library never imports this module."""

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/lenet5_fashion_mnist.py or file.py:arg=value."
)
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, logs and results; rerun to resume."
)
JSON = flags.DEFINE_bool("json", False, "models: print a JSON list instead of a table.")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "train: one run over several processes/hosts (CNNJAX_COORDINATOR_ADDRESS, "
    "CNNJAX_NUM_PROCESSES, CNNJAX_PROCESS_ID, or SLURM / Cloud TPU detected by JAX).",
)
ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "train: resume a run with a config that changes the math (the old config is kept in "
    "config_history/); without it such a resume is refused.",
)
WORKERS = flags.DEFINE_integer(
    "workers",
    1,
    "sweep: runs at once on this machine, each pinned to its share of the cores and of the GPUs "
    "or TPU chips.",
)
SHARE_DEVICES = flags.DEFINE_bool(
    "share_devices",
    False,
    "sweep: allow more --workers than GPUs; they share them round-robin, each with an equal part "
    "of a GPU's memory (without it, each worker gets its own GPUs or TPU chips).",
)
DRY_RUN = flags.DEFINE_bool("dry_run", False, "sweep: print what would run and start nothing.")
LAUNCHER = flags.DEFINE_enum(
    "launcher",
    "local",
    ["local", "slurm", "inline"],
    "sweep: where runs go: local (a `cnnjax train` process per run, --workers at a time), slurm "
    "(an array job), inline (one after another inside this process, no isolation: for tests, "
    "debugging and tiny sweeps).",
)
SLURM_PARTITION = flags.DEFINE_string("slurm_partition", "", "sweep on SLURM: partition.")
SLURM_TIME = flags.DEFINE_string("slurm_time", "04:00:00", "sweep on SLURM: time per run.")
SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 4, "sweep on SLURM: CPUs per run.")
SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_task", 0, "sweep on SLURM: GPUs per run.")
SLURM_MEM = flags.DEFINE_string("slurm_mem", "", "sweep on SLURM: memory per run, e.g. 16G.")
SLURM_MAX_PARALLEL = flags.DEFINE_integer(
    "slurm_max_parallel", 0, "sweep on SLURM: array tasks at once (0: no limit)."
)
SLURM_SIGNAL_SECONDS = flags.DEFINE_integer(
    "slurm_signal_seconds",
    120,
    "sweep on SLURM: SIGTERM this long before the time limit; the run saves and is requeued.",
)
SLURM_SETUP = flags.DEFINE_string(
    "slurm_setup", "", "sweep on SLURM: shell line each task runs first (module load ...)."
)

CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "best",
    "eval/visualize/predict/export-weights: best (by test accuracy), latest, or a step number.",
)
SPLIT = flags.DEFINE_string("split", "", "eval: a TFDS split instead of the run's eval split.")
USE_EMA = flags.DEFINE_bool("use_ema", False, "eval: the EMA of the weights (train.ema_decay).")
CROPS = flags.DEFINE_integer(
    "crops",
    1,
    "eval: views averaged per image: 10 (centre, 4 corners, all mirrored), 5 (no mirrors), "
    "2 (centre and mirror) or 1 (the usual evaluation).",
)
CROP_PADDING = flags.DEFINE_integer(
    "crop_padding",
    None,
    "eval --crops, in-memory datasets: zero padding the crops are cut from (default: the run's "
    "data.augment.random_crop_padding).",
)
SHIFT = flags.DEFINE_list(
    "shift", [], "eval: shifts in pixels, each in 4 directions, e.g. 0,1,2,3,4 (invariance)."
)
ROTATE = flags.DEFINE_list(
    "rotate", [], "eval: rotations in degrees counter-clockwise, e.g. 0,10,20,30,45 (invariance)."
)
SCALE = flags.DEFINE_list(
    "scale", [], "eval: zoom factors about the centre, e.g. 0.8,0.9,1,1.1,1.2 (invariance)."
)
PERMUTE_PIXELS = flags.DEFINE_list(
    "permute_pixels", [], "eval: seeds of fixed permutations of the pixel positions (invariance)."
)
flags.DEFINE_alias("permute-pixels", "permute_pixels")
LAYERS = flags.DEFINE_list(
    "layers", [], "visualize: layers for feature maps and top activations, e.g. ConvBlock_1."
)
IMAGES = flags.DEFINE_list("images", [], "visualize: indices of eval-split images to show.")
UNITS = flags.DEFINE_list(
    "units", [], "visualize: units drawn per layer in top_activations_<layer>.png (first 8)."
)
TOP_IMAGES = flags.DEFINE_integer(
    "top_images", 9, "visualize: top-activating test images drawn per unit."
)
EXAMPLES = flags.DEFINE_integer("examples", 4, "gradcheck: training examples in the batch.")
DIRECTIONS = flags.DEFINE_integer("directions", 4, "gradcheck: random directions checked.")
COORDINATES = flags.DEFINE_integer("coordinates", 8, "gradcheck: single parameters checked.")
DEPTH = flags.DEFINE_integer("depth", 0, "summary: fold modules deeper than this (0: all).")
FROM = flags.DEFINE_string(
    "from", None, "import-weights: torchvision:ARCH or timm:ARCH, e.g. torchvision:resnet50."
)
FILE = flags.DEFINE_string(
    "file", None, "import-weights / export-weights: the .safetensors or .pth state dict."
)
TO = flags.DEFINE_enum("to", "torchvision", ["torchvision"], "export-weights: the layout.")
INTERPOLATION = flags.DEFINE_enum(
    "interpolation",
    "bilinear",
    ["bilinear", "bicubic"],
    "import-weights: the resize of the weights' evaluation transform (timm's are often bicubic).",
)
EVAL_RESIZE = flags.DEFINE_integer(
    "eval_resize",
    0,
    "import-weights: shorter side before the center crop (0: the architecture's, 256 or 342).",
)
INPUTS = flags.DEFINE_string(
    "inputs", None, "predict: an .npy of preprocessed images [N, H, W, C], or a folder of images."
)
OUTPUT = flags.DEFINE_string("output", None, "predict: where the logits go (.npy).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "predict: images per batch.")

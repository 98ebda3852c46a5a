"""Published weights in and out of cnnjax runs: `import_weights` makes a workdir that
`cnnjax eval`, `visualize`, `predict` and `--config.init_from` accept; `export_weights` writes a
run's weights as a torchvision state dict.

An imported run is a run at step 0: config.json (the model with the options that reproduce the
source network, imagenet2012 with its evaluation transform), one Orbax checkpoint holding the
converted weights in a fresh train state, and `imported.json` saying where they came from
(library, architecture, file, its SHA-256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax.config_base import get_base_config
from cnnjax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, torchvision_eval_settings
from cnnjax.data.inputs import TrainingSplitStats
from cnnjax.errors import UserError
from cnnjax.files import read_text, write_atomically
from cnnjax.train.checkpoints import RunCheckpoints, model_signature, read_saved_state
from cnnjax.train.config_history import config_json
from cnnjax.train.progress import RunRecord
from cnnjax.train.run import TRAIN_STATS_FILE, build_model, make_run_optimizer, schedule_of
from cnnjax.train.state import train_state_from_variables
from cnnjax.train.trained_run import CONFIG_FILE, read_run_config
from cnnjax.train.workdir import make_workdir
from cnnjax.weights.convert import flax_to_torch, torch_to_flax
from cnnjax.weights.layouts import timm_layout, torchvision_layout
from cnnjax.weights.tensor_files import read_state_dict, write_state_dict

IMPORTED_FILE = "imported.json"
IMAGENET_TRAIN_EXAMPLES = 1_281_167


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A torchvision architecture as a cnnjax model: its name and options, and the evaluation
    transform its published weights were measured with (shorter side to `resize`, center crop
    `crop`)."""

    model: str
    options: dict = dataclasses.field(default_factory=dict)
    dropout_rate: float = 0.0
    crop: int = 224
    resize: int = 256


_INCEPTION = {"batch_norm_epsilon": 1e-3, "transform_input": True}
ARCHITECTURES = {
    **{f"resnet{d}": Architecture(f"resnet{d}") for d in (18, 34, 50, 101, 152)},
    **{f"wide_resnet{d}_2": Architecture(f"wide_resnet{d}_2") for d in (50, 101)},
    **{f"vgg{d}": Architecture(f"vgg{d}", dropout_rate=0.5) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": Architecture(f"vgg{d}_bn", dropout_rate=0.5) for d in (11, 13, 16, 19)},
    "alexnet": Architecture("alexnet", dropout_rate=0.5),
    "googlenet": Architecture("googlenet", _INCEPTION, dropout_rate=0.2),
    "inception_v3": Architecture(
        "inception_v3", _INCEPTION, dropout_rate=0.5, crop=299, resize=342
    ),
}
# timm's ImageNet weights of the same networks (its VGG classifier is convolutional, the same
# tensors); timm's Inception v3 takes inputs in [-1, 1] directly, without the re-normalization.
TIMM_ARCHITECTURES = {
    name: arch
    for name, arch in ARCHITECTURES.items()
    if name.startswith(("resnet", "wide_resnet", "vgg"))
} | {"inception_v3": Architecture("inception_v3", {"batch_norm_epsilon": 1e-3}, 0.5, 299, 342)}
LIBRARIES = {"torchvision": ARCHITECTURES, "timm": TIMM_ARCHITECTURES}


def parse_source(source: str) -> tuple[str, str, Architecture]:
    """'torchvision:resnet50' -> ('torchvision', 'resnet50', its Architecture)."""
    library, _, name = source.partition(":")
    if library not in LIBRARIES or not name:
        raise UserError(f"--from={source!r}: give torchvision:ARCH or timm:ARCH")
    known = LIBRARIES[library]
    if name not in known:
        raise UserError(f"--from={source!r}: {library} architectures are {', '.join(known)}")
    return library, name, known[name]


def _has_aux_heads(tensors: dict) -> bool:
    return any(k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in tensors)


def imported_config(
    arch: Architecture, aux_logits: bool, interpolation: str
) -> ml_collections.ConfigDict:
    """The config of an imported run: the model as the source built it, imagenet2012 evaluated
    with the source's transform (no reduced JPEG decode: the pixels torchvision sees)."""
    config = get_base_config()
    config.model.name = arch.model
    config.model.normalization = (
        "none"
        if arch.model in ("alexnet",)
        or (arch.model.startswith("vgg") and not arch.model.endswith("_bn"))
        else "batch"
    )
    config.model.dropout_rate = arch.dropout_rate
    options = dict(arch.options)
    if arch.model in ("googlenet", "inception_v3"):
        options["aux_logits"] = aux_logits
    config.model.options = ml_collections.ConfigDict(options)
    config.data.name = "imagenet2012"
    config.data.train_split, config.data.eval_split = "train", "validation"
    for key, value in torchvision_eval_settings(arch.resize, arch.crop, interpolation).items():
        section, name = key.split(".")
        config[section][name] = value
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.01
    return config


def imported_model(source: str, tensors: dict, *, interpolation: str = "bilinear", resize=None):
    """(config, model, variables) of the state dict `tensors` from `source` =
    'torchvision:ARCH' / 'timm:ARCH': what `import_weights` saves."""
    library, name, arch = parse_source(source)
    if resize:
        arch = dataclasses.replace(arch, resize=resize)
    head = next((k for k in ("fc", "classifier.6", "head.fc") if f"{k}.weight" in tensors), None)
    if head is None:
        raise UserError(
            "the weights have no classifier tensor (fc, classifier.6 or head.fc): check --from"
        )
    num_classes = int(tensors[f"{head}.weight"].shape[0])
    config = imported_config(arch, _has_aux_heads(tensors), interpolation)
    model = build_model(config, num_classes)
    layout = (timm_layout if library == "timm" else torchvision_layout)(model)
    size = config.data.image_size
    sample = jnp.zeros((1, size, size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    return config, model, torch_to_flax(tensors, layout, abstract)


def import_weights(
    source: str,
    weights_file: str,
    workdir: str,
    *,
    interpolation: str = "bilinear",
    resize: int | None = None,
) -> dict:
    """Converts `weights_file` (a `source` = 'torchvision:ARCH' / 'timm:ARCH' state dict) into a
    cnnjax run in `workdir`; returns what `imported.json` records."""
    parse_source(source)  # a bad --from fails before the file is read
    if read_text(os.path.join(workdir, CONFIG_FILE)) is not None:
        raise UserError(f"{workdir} already holds a run: import into a new --workdir")
    tensors = read_state_dict(weights_file)
    config, model, variables = imported_model(
        source, tensors, interpolation=interpolation, resize=resize
    )
    num_classes = int(np.asarray(_head(variables["params"])["bias"]).shape[0])
    schedule = schedule_of(config, IMAGENET_TRAIN_EXAMPLES)
    tx = make_run_optimizer(config, schedule)
    # The train state around the imported weights (no random initialization to throw away).
    state = train_state_from_variables(model, tx, variables, seed=config.seed)
    make_workdir(workdir)
    checkpoints = RunCheckpoints(workdir, keep_best=config.train.keep_best_checkpoints)
    try:
        record = RunRecord().to_checkpoint(model_signature(config.model.name, state.params), {}, {})
        checkpoints.save(0, state, record)
    finally:
        checkpoints.close()
    stats = TrainingSplitStats(IMAGENET_TRAIN_EXAMPLES, num_classes, IMAGENET_MEAN, IMAGENET_STD)
    write_atomically(os.path.join(workdir, TRAIN_STATS_FILE), json.dumps(stats.to_json()))
    write_atomically(os.path.join(workdir, CONFIG_FILE), config_json(config))
    provenance = {
        "source": source,
        "file": os.path.abspath(weights_file),
        "sha256": _sha256(weights_file),
        "num_classes": num_classes,
        "tensors": len(tensors),
        "model": config.model.name,
        "evaluation": {
            "resize": config.data.eval_resize,
            "crop": config.data.image_size,
            "interpolation": interpolation,
        },
    }
    write_atomically(os.path.join(workdir, IMPORTED_FILE), json.dumps(provenance, indent=2) + "\n")
    return provenance


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_weights(
    workdir: str, weights_file: str, *, checkpoint: str = "best", target: str = "torchvision"
) -> int:
    """Writes checkpoint `checkpoint` of the run in `workdir` as a torchvision state dict
    (.safetensors or .pth); returns the number of tensors."""
    if target != "torchvision":
        raise UserError(f"--to={target!r}: weights export to torchvision")
    config = read_run_config(workdir)
    saved, _ = read_saved_state(workdir, checkpoint)
    params = saved.get("params", {})
    num_classes = int(np.asarray(_head(params)["bias"]).shape[0])
    model = build_model(config, num_classes)
    variables = {"params": params, "batch_stats": saved.get("batch_stats") or {}}
    vgg_bn = config.model.name.startswith("vgg") and config.model.normalization == "batch"
    tensors = flax_to_torch(variables, torchvision_layout(model), conv_bias_before_norm=vgg_bn)
    write_state_dict({k: np.asarray(v) for k, v in tensors.items()}, weights_file)
    return len(tensors)


def _head(params: dict) -> dict:
    """The classifier's Dense: VGG's and AlexNet's third, the others' only top-level one."""
    return params.get("Dense_2") or params["Dense_0"]

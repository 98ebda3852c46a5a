"""Fine-tuning: start from another run's weights, freeze some, train groups at their own rates.

`config.init_from` names the workdir of a finished run. Its parameters and batch statistics are
copied into the new run's fresh state wherever the path and shape match, except paths matching
`finetune.reinit` (a new head for new classes even when the class count is the same); heads whose
shapes differ keep their fresh initialization. `finetune.freeze` and `finetune.lr_multipliers`
become an `optax.multi_transform` over parameter-path labels; `finetune.batch_norm="frozen"`
keeps batch norm in inference mode while training (the usual choice when the new data is small):
the model's `layer_options.frozen_batch_norm`, set by `cnnjax.train.run.layer_options`.
"""

from __future__ import annotations

import re

import jax
import ml_collections
import numpy as np
import optax
from etils import epath

from cnnjax.errors import UserError
from cnnjax.files import resolve
from cnnjax.train.checkpoints import read_saved_state

FROZEN = "frozen"
BASE = "base"


def param_path(path) -> str:
    """'ConvBlock_0/Conv_0/kernel' for a tree path of dict keys."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _compile(pattern: str, key: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserError(
            f"config.finetune.{key}={pattern!r} is not a regular expression ({error})"
        ) from None


def parse_lr_multipliers(text: str) -> list[tuple[re.Pattern, float]]:
    """[(pattern, factor)] from "regex=factor;regex=factor"."""
    groups = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        pattern, _, factor = item.rpartition("=")
        try:
            value = float(factor)
        except ValueError:
            value = -1.0
        if not pattern or value < 0:
            raise UserError(
                f"config.finetune.lr_multipliers: {item!r} is not 'regex=factor' with a "
                "factor >= 0, e.g. 'ConvBlock=0.1;Dense_2=1'"
            )
        groups.append((_compile(pattern, "lr_multipliers"), value))
    return groups


def group_labels(params, config: ml_collections.ConfigDict):
    """The optimizer group of every parameter: frozen, base, or its learning-rate factor."""
    freeze = _compile(config.freeze, "freeze")
    multipliers = parse_lr_multipliers(config.lr_multipliers)

    def label(path, _):
        name = param_path(path)
        if freeze is not None and freeze.search(name):
            return FROZEN
        for pattern, factor in multipliers:
            if pattern.search(name):
                return FROZEN if factor == 0 else f"x{factor:g}"
        return BASE

    return jax.tree_util.tree_map_with_path(label, params)


def wrap_optimizer(
    tx: optax.GradientTransformation, config: ml_collections.ConfigDict
) -> optax.GradientTransformation:
    """`tx` per group: frozen parameters get no update (nor weight decay), groups with a factor
    get `tx`'s update scaled by it (the same as scaling the schedule's learning rate)."""
    if not (config.freeze or config.lr_multipliers):
        return tx
    factors = {f"x{factor:g}": factor for _, factor in parse_lr_multipliers(config.lr_multipliers)}
    transforms = {FROZEN: optax.set_to_zero(), BASE: tx}
    for name, factor in factors.items():
        if factor:
            transforms[name] = optax.chain(tx, optax.scale(factor))
    return optax.multi_transform(transforms, lambda params: group_labels(params, config))


def read_pretrained(workdir: str, checkpoint: str) -> tuple[dict, int]:
    """The saved state tree (params, batch_stats, ...) of `workdir`'s checkpoint, as numpy."""
    if not epath.Path(workdir, "checkpoints").is_dir():
        raise UserError(
            f"config.init_from={workdir!r} holds no checkpoints: give the --workdir of a "
            "finished `cnnjax train` run"
        )
    return read_saved_state(workdir, checkpoint)


def merge_pretrained(fresh, saved, reinit: re.Pattern | None) -> tuple[object, list[str]]:
    """`fresh` with every leaf replaced by `saved`'s at the same path and shape, unless `reinit`
    matches its path; returns the tree and the paths that kept their fresh values."""
    saved_leaves = {
        param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    kept = []

    def pick(path, leaf):
        name = param_path(path)
        old = saved_leaves.get(name)
        if old is not None and _rgb_kernel_for_gray(old.shape, leaf.shape):
            # RGB weights on one-channel images (ImageNet weights, Fashion-MNIST): a gray image
            # is R = G = B, on which the kernel acts as the sum of its three input channels.
            old = np.asarray(old).sum(axis=-2, keepdims=True)
        if (reinit is not None and reinit.search(name)) or old is None or old.shape != leaf.shape:
            kept.append(name)
            return leaf
        return np.asarray(old, leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh), kept


def _rgb_kernel_for_gray(saved: tuple, fresh: tuple) -> bool:
    """Whether `saved` is a convolution kernel [..., 3, O] where the model has [..., 1, O]."""
    return (
        len(saved) >= 3
        and len(saved) == len(fresh)
        and saved[-2:] == (3, fresh[-1])
        and fresh[-2] == 1
        and saved[:-2] == fresh[:-2]
    )


def initialize_from(state, config: ml_collections.ConfigDict) -> tuple[object, str]:
    """`state` with the weights of `config.init_from`; returns it and a one-line report."""
    source = resolve(config.init_from)  # a local path or a URL (gs://...)
    saved, step = read_pretrained(source, config.finetune.checkpoint)
    reinit = _compile(config.finetune.reinit, "reinit")
    params, fresh = merge_pretrained(jax.device_get(state.params), saved.get("params", {}), reinit)
    stats, _ = merge_pretrained(
        jax.device_get(state.batch_stats), saved.get("batch_stats") or {}, reinit
    )
    total = len(jax.tree.leaves(params))
    if len(fresh) == total:
        raise UserError(
            f"config.init_from={source!r}: no parameter matches this model's paths and shapes "
            "(another model?): check config.model and finetune.reinit"
        )
    state = state.replace(params=params, batch_stats=stats)
    if config.train.ema_decay:
        state = state.replace(ema_params=jax.tree.map(np.copy, params))
    report = (
        f"initialized from {source} (step {step}): {total - len(fresh)} of {total} parameter "
        f"arrays loaded; fresh: {', '.join(fresh) or 'none'}"
    )
    return state, report

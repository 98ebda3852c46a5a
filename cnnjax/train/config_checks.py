"""Checks of a resolved config before any work starts: each problem is one line with its fix.

Each stage checks its own section (cnnjax/models/config_checks.py, cnnjax/data/config_checks.py,
`validate_optimizer_config` in cnnjax/train/optim.py); `validate_config` runs them all, then the
checks of the train, finetune and parallel sections and of the settings that tie sections
together.
"""

from __future__ import annotations

import ml_collections

from cnnjax.config_values import check_choice, check_fraction, check_positive
from cnnjax.data.config_checks import validate_data_config
from cnnjax.data.sources import default_data_dir
from cnnjax.data.tasks import TASKS
from cnnjax.errors import UserError
from cnnjax.files import refuse_object_store
from cnnjax.models import registry
from cnnjax.models.config_checks import validate_model_config
from cnnjax.train.optim import validate_optimizer_config

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
PARALLEL_STEPS = ("jit", "shard_map")


def validate_config(
    config: ml_collections.ConfigDict, *, custom_model: bool = False, custom_data: bool = False
) -> None:
    """Raises UserError for the first invalid setting of `config`.

    `custom_model` / `custom_data`: the run was given its own model / data (`train_and_evaluate`'s
    `model` and `data`), so `config.model` and the dataset settings of `config.data` are not
    used and not checked; the data task and batch sizes, which the training loop reads, still are.
    """
    if not custom_model:
        validate_model_config(config)
    if custom_data:
        _check_batching(config)
    else:
        validate_data_config(config)
        _check_data_on_disk(config)
    if not custom_model:
        _check_model_matches_task(config)
    # The run's length first: the optimizer's warm-up is checked against it.
    check_positive(config.train.epochs, "train.epochs")
    if config.train.steps is not None:
        check_positive(config.train.steps, "train.steps")
    validate_optimizer_config(config)
    _check_train(config)
    check_choice("finetune.batch_norm", config.finetune.batch_norm, ("update", "frozen"))
    parallel = config.parallel
    check_positive(parallel.num_devices, "parallel.num_devices", allow_zero=True)
    check_choice("parallel.step", parallel.step, PARALLEL_STEPS)
    check_choice("parallel.batch_norm", parallel.batch_norm, ("sync", "ghost"))


def _check_data_on_disk(config: ml_collections.ConfigDict) -> None:
    """Datasets are prepared and read under file locks, which an object store (gs://) lacks (a
    workdir there is fine: cnnjax/files.py)."""
    folders = {
        "data.data_dir": config.data.get("data_dir") or default_data_dir(),
        "data.image_folder": config.data.get("image_folder") or "",
    }
    for key, folder in folders.items():
        refuse_object_store(
            folder,
            f"config.{key}={folder}: preparing a dataset",
            "copy the prepared dataset to a local disk (e.g. gcloud storage cp -r) and give that "
            "folder (cnnjax reads datasets from local disks only; workdirs may be on gs://)",
        )


def _check_batching(config: ml_collections.ConfigDict) -> None:
    """What the training loop reads of `config.data` whatever data it is given."""
    check_choice("data task", config.data.task, TASKS)
    check_positive(config.data.batch_size, "data.batch_size")
    check_positive(config.data.eval_batch_size, "data.eval_batch_size")


def _check_model_matches_task(config: ml_collections.ConfigDict) -> None:
    task = registry.get_spec(config.model.name).task
    if (task == "segmentation") != (config.data.task == "segmentation"):
        raise UserError(
            f"model {config.model.name!r} is for {task} but config.data.task is "
            f"{config.data.task!r}: pick a matching model or task"
        )


def _check_train(config: ml_collections.ConfigDict) -> None:
    train = config.train
    check_positive(train.log_every_steps, "train.log_every_steps")
    check_positive(train.eval_every_epochs, "train.eval_every_epochs")
    check_positive(train.checkpoint_every_steps, "train.checkpoint_every_steps")
    check_positive(train.keep_best_checkpoints, "train.keep_best_checkpoints")
    check_choice("train.compute_dtype", train.compute_dtype, COMPUTE_DTYPES)
    check_positive(train.grad_accum_steps, "train.grad_accum_steps")
    if train.get("eval_mirrored", False) and config.data.task not in ("classification",):
        raise UserError(
            f"train.eval_mirrored mirrors test images of a classification task, not of the "
            f"{config.data.task!r} task: set train.eval_mirrored=False"
        )
    if config.data.batch_size % train.grad_accum_steps:
        raise UserError(
            f"config.data.batch_size={config.data.batch_size} does not split into "
            f"train.grad_accum_steps={train.grad_accum_steps} equal micro-batches"
        )
    check_fraction(train.ema_decay, "train.ema_decay")
    if train.compute_dtype == "float16":
        check_positive(train.loss_scale_period, "train.loss_scale_period")
        if not train.loss_scale_initial >= 1:
            raise UserError(
                f"train.loss_scale_initial={train.loss_scale_initial}: use a power of 2 of at "
                "least 1 (2**15 is the usual start)"
            )

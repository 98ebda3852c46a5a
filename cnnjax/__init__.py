"""cnnjax: a JAX/Flax research framework for convolutional neural networks.

The Python API (importing cnnjax changes nothing in the process: no environment, XLA flag,
matplotlib backend or jax.config; call `cnnjax.fast_paths.enable()` before JAX starts for the
XLA:CPU flag the command line sets)::

    import cnnjax

    config = cnnjax.load_config("configs/lenet5_fashion_mnist.py:smoke")
    outcome = cnnjax.train_and_evaluate(config, "runs/notebook")   # .state, .model, .results
    trained = cnnjax.load_trained_run("runs/notebook", "best")
    metrics = trained.evaluate()                                    # top-1, top-5, ECE, ...

The names below load their modules on first use, so `import cnnjax` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute).
_API = {
    "create_model": ("cnnjax.models", "create"),
    "list_models": ("cnnjax.models", "list_models"),
    "register_model": ("cnnjax.models", "register"),
    "LayerOptions": ("cnnjax.models.layers", "LayerOptions"),
    "get_base_config": ("cnnjax.config_base", "get_base_config"),
    "load_config": ("cnnjax.config_loader", "load_config"),
    "validate_config": ("cnnjax.train.config_checks", "validate_config"),
    "train_and_evaluate": ("cnnjax.train.loop", "train_and_evaluate"),
    "TrainingOutcome": ("cnnjax.train.loop", "TrainingOutcome"),
    "TrainingData": ("cnnjax.data.inputs", "TrainingData"),
    "StepOptions": ("cnnjax.train.steps", "StepOptions"),
    "load_trained_run": ("cnnjax.train.trained_run", "load_trained_run"),
    "TrainedRun": ("cnnjax.train.trained_run", "TrainedRun"),
    "UserError": ("cnnjax.errors", "UserError"),
    "TrainingDiverged": ("cnnjax.errors", "TrainingDiverged"),
    "TrainingInterrupted": ("cnnjax.errors", "TrainingInterrupted"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        # Subpackages (cnnjax.models, cnnjax.fast_paths, ...) import as usual.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

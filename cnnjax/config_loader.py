"""Loads a recipe as `cnnjax train --config=FILE.py[:ARG] --config.KEY=VALUE ...` does.

ml_collections' `config_flags` parses the file and its overrides, so `load_config` and the
command line (cnnjax/cli.py) build the same ConfigDict and refuse the same things with the same
one-line messages (`parse_error_message`, `check_loaded`).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from cnnjax.config_base import flatten
from cnnjax.errors import UserError


def load_config(
    path: str, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> ml_collections.ConfigDict:
    """The config of `cnnjax train --config=PATH [--config.KEY=VALUE ...]`.

    `path` is a recipe file with an optional argument for its `get_config` (`configs/x.py:smoke`).
    `overrides` are command-line arguments (`--config.KEY=VALUE`, or `KEY=VALUE`) or a dict
    {dotted.key: value} (nested dicts are flattened; values are written with `format_value`); each
    is parsed by the type of its key, as on the command line. The config is locked as there:
    existing keys can change, new ones cannot be added. Raises UserError with the command line's
    message for a file that cannot be loaded or an override it refuses.
    """
    argv = ["cnnjax", f"--config={path}", *_override_args(overrides)]
    flag_values = flags.FlagValues()  # not absl's global flags: no clash with a running program
    config = config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    source = repr(path)
    try:
        with _fresh_module("config_config"):
            flag_values(argv)
    except UserError:  # raised by the recipe's get_config, e.g. an unknown argument
        raise
    except Exception as error:  # noqa: BLE001 (anything raised while running get_config)
        raise UserError(parse_error_message(error, source)) from None
    return check_loaded(config.value, source)


@contextlib.contextmanager
def _fresh_module(name: str) -> Iterator[None]:
    """Runs the block without sys.modules[`name`], then puts back what was there.

    ml_collections loads every `--config` file as module `name` with importlib's `load_module`,
    which re-executes a new file inside the module already registered under that name: a second
    file without get_config() would silently keep the first one's, unlike a fresh `cnnjax train`.
    The module of a recipe that is itself loading another one (its get_config calls this) is
    kept intact.
    """
    previous = sys.modules.pop(name, None)
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def _override_args(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"--config.{k}={format_value(v)}" for k, v in flatten(dict(overrides)).items()]
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of strings or a dict, not {overrides!r}")
    return [arg if arg.startswith("-") else f"--config.{arg}" for arg in overrides]


def format_value(value) -> str:
    """`value` as `--config.key=` expects it (the inverse of ml_collections' parser)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (tuple, list)):
        inner = ",".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if value is None:
        return "None"
    return str(value)


def parse_error_message(error: Exception, source: str = "--config") -> str:
    """One line for an exception raised while parsing flags that load a config from `source`
    (how the command line and `load_config` name the file): the problem and what to check."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, (KeyError, AttributeError, flags.UnrecognizedFlagError)):
        module = getattr(error, "obj", None)
        if getattr(error, "name", None) == "get_config" and isinstance(module, types.ModuleType):
            # ml_collections calls module.get_config() without checking that the file has one.
            return (
                f"{module.__file__} defines no get_config(): a recipe file defines "
                "get_config(arg=None) returning an ml_collections.ConfigDict "
                "(see configs/lenet5_fashion_mnist.py)"
            )
        return (
            f"unknown flag or config key ({_first_line(error)}): check the key against "
            "the config file (overrides cannot add keys) or see --helpfull"
        )
    if isinstance(error, flags.Error):
        text = str(error).strip()
        if "Error whilst parsing config file" in text:  # the config's own exception, last line
            return f"cannot load {source} ({text.splitlines()[-1].strip()})"
        return f"{_first_line(error)} (check the flag's value; --helpfull lists flags)"
    return f"cannot load {source} ({type(error).__name__}: {_first_line(error)})"


def is_unreadable(value) -> bool:
    """Whether `value` stands for a config file that could not be read (ml_collections defers
    that OSError to the value's first use)."""
    return _read_error(value) is not None


def check_loaded(value, source: str = "--config") -> ml_collections.ConfigDict:
    """`value`, the result of loading a config from `source`, when it is a ConfigDict; otherwise
    a UserError for the unreadable file or for what `get_config()` returned instead."""
    error = _read_error(value)
    if error is not None:
        lines = [line.strip() for line in str(error).splitlines() if "Errno" in line]
        raise UserError(f"cannot load {source}: {lines[0] if lines else _first_line(error)}")
    # ml_collections keeps whatever get_config() returned (it only logs a warning for None).
    if not isinstance(value, ml_collections.ConfigDict):
        raise UserError(
            f"cannot load {source}: get_config() returned {type(value).__name__}, "
            "not an ml_collections.ConfigDict"
        )
    return value


def _read_error(value) -> OSError | None:
    try:
        getattr(value, "keys", None)
    except OSError as error:
        return error
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

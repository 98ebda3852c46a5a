"""The model registry: `create(name, **options)`, `list_models()`, `default_input_shape(name)`.

A family is a Flax module class in its own file; a variant is a registered function of two
lines. Options are checked against the family's fields so that a typo fails at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from cnnjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: how to build it and the input it was designed for."""

    name: str
    family: type[nn.Module]
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # one example at its default size: [H, W, C], [L, C], ...
    task: str = "classification"  # or "segmentation": logits per pixel [B, H, W, K]


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    family: type[nn.Module],
    input_shape: tuple[int, ...],
    task: str = "classification",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a variant builder `fn(**options) -> nn.Module` under `name`."""

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        known = _REGISTRY.get(name)
        # The same builder again (a re-run notebook cell, a reloaded module) replaces itself;
        # another builder under a taken name is a mistake.
        if known is not None and _identity(known.build) != _identity(build):
            raise ValueError(
                f"model {name!r} is already registered by {'.'.join(_identity(known.build))}: "
                "choose another name"
            )
        _REGISTRY[name] = ModelSpec(name, family, build, tuple(input_shape), task)
        return build

    return decorate


def _identity(build: Callable) -> tuple[str, str]:
    return (getattr(build, "__module__", "?"), getattr(build, "__qualname__", repr(build)))


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registered spec of `name`; an unknown name fails listing the known ones."""
    if name not in _REGISTRY:
        raise UserError(
            f"unknown model {name!r}: choose one of {', '.join(list_models())} "
            "(`cnnjax models` lists them)"
        )
    return _REGISTRY[name]


def family_options(name: str) -> list[str]:
    """The keyword options that the family of `name` accepts."""
    fields = dataclasses.fields(get_spec(name).family)
    return sorted(f.name for f in fields if f.init and f.name not in ("parent", "name"))


def create(name: str, **options: Any) -> nn.Module:
    """Builds the variant `name` with `options` (e.g. num_classes, activation, normalization)."""
    spec = get_spec(name)
    accepted = family_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"model {name!r} has no option {', '.join(unknown)}: "
            f"its options are {', '.join(accepted)}"
        )
    return spec.build(**options)


def default_input_shape(name: str) -> tuple[int, ...]:
    """The shape of one example at the variant's default input size ([H, W, C] for images)."""
    return get_spec(name).input_shape

"""Checks of single config values, shared by each stage's config checks: a bad value is one
UserError line naming the key, what it must be, and the flag that sets it."""

from __future__ import annotations

import math

from cnnjax.errors import UserError


def is_finite(value) -> bool:
    """Whether `value` is a finite number (False for None, strings, NaN and inf)."""
    try:
        return math.isfinite(value)
    except (TypeError, OverflowError):  # None, a string, an int beyond the float range
        return False


def check_positive(value, key: str, *, allow_zero: bool = False) -> None:
    """Raises UserError unless config.`key` = `value` is a finite number > 0 (>= 0 with
    `allow_zero`)."""
    # NaN compares false with everything, so a plain `value < 0` would let it through.
    bound = ">= 0" if allow_zero else "> 0"
    if not is_finite(value):
        raise UserError(
            f"config.{key} must be a finite number {bound} (got {value}): set config.{key}=..."
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"config.{key} must be {bound} (got {value}): set config.{key}=...")


def check_fraction(value, key: str) -> None:
    """Raises UserError unless config.`key` = `value`, a probability-like setting, is in [0, 1),
    which NaN and inf never are."""
    if not (is_finite(value) and 0.0 <= value < 1.0):
        raise UserError(f"config.{key} must be in [0, 1) (got {value}): set config.{key}=...")


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a one-line UserError when `value` is not one of `choices`."""
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}: choose one of {', '.join(choices)}")

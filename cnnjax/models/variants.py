"""Every registered variant: one short function per name, grouped by family."""

from __future__ import annotations

from cnnjax.models.lenet import LeNet5
from cnnjax.models.registry import register


@register("lenet5", family=LeNet5, input_shape=(32, 32, 1))
def lenet5(**options) -> LeNet5:
    return LeNet5(**options)

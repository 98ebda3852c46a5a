"""Checks of `config.model` before any work starts: each problem is one line with its fix."""

from __future__ import annotations

import ml_collections

from cnnjax.config_values import check_fraction
from cnnjax.models import registry
from cnnjax.models.layers import check_normalization, get_activation


def validate_model_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first invalid setting of `config.model` (`config` is the whole
    run config)."""
    model = config.model
    registry.get_spec(model.name)
    get_activation(model.activation)
    check_normalization(model.normalization)
    check_fraction(model.dropout_rate, "model.dropout_rate")

"""Model families and their registry. Importing this package registers every variant."""

from cnnjax.models import variants as _variants  # noqa: F401  (registers the variants)
from cnnjax.models.registry import (
    create,
    default_input_shape,
    family_options,
    list_models,
    register,
)

__all__ = ["create", "default_input_shape", "family_options", "list_models", "register"]

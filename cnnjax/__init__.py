"""cnnjax: a JAX/Flax research framework for convolutional neural networks."""

from cnnjax import fast_paths

__version__ = "0.1.0"

# XLA reads its flags once, when the first computation starts the backend: set them on import.
fast_paths.add_xla_flags()

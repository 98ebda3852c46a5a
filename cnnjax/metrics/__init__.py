"""Where metrics go: JSON lines, TensorBoard events and plots of the training curves."""

from cnnjax.metrics.plots import plot_curves
from cnnjax.metrics.writers import MetricWriter, NullWriter, read_metrics

__all__ = ["MetricWriter", "NullWriter", "plot_curves", "read_metrics"]

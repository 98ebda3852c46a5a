"""Training curves as a PNG: loss and accuracy against epochs, train and test.

Drawn on a `matplotlib.figure.Figure` of its own, never through pyplot: a library that writes
files must not pick the process's backend (a notebook's inline plots would stop showing).
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from cnnjax.files import write_bytes


def plot_curves(records: list[dict], path: str, *, title: str = "") -> str:
    """Draws loss and accuracy per epoch from metrics records into `path` (local or a URL such
    as gs://bucket/run/curves.png); returns `path`."""
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    # Epoch means of training (not the noisier per-log-step windows) against each evaluation.
    for split, label, style in (("train_epoch", "train", "-"), ("test", "test", "o-")):
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        loss_ax.plot(epochs, [r["loss"] for r in rows], style, label=label, markersize=4)
        acc_ax.plot(epochs, [r["accuracy"] for r in rows], style, label=label, markersize=4)
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = io.BytesIO()  # drawn in memory, then written whole (or uploaded) in one piece
    fig.savefig(png, format="png", dpi=120)
    write_bytes(path, png.getvalue())
    return path

"""The figures of `cnnjax visualize` (cnnjax/inspect/visualize.py): each `draw_*` function
takes arrays already computed and writes one PNG, returning its path."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

MAX_CHANNELS, MAX_FILTERS, MAX_HISTOGRAMS = 16, 64, 16


def spread(items: list, limit: int) -> list:
    """At most `limit` of `items`, evenly spaced from the first to the last."""
    picks = np.linspace(0, len(items) - 1, min(limit, len(items))).round().astype(int)
    return [items[i] for i in picks]


def as_picture(example: np.ndarray) -> np.ndarray:
    """One example as a 2-D (gray) or RGB picture: [H, W, C] -> [H, W] or [H, W, 3]; [L, C]
    as it is; [T, H, W, C] by its middle frame."""
    if example.ndim == 4:
        return as_picture(example[example.shape[0] // 2])
    if example.ndim == 3:
        return example if example.shape[-1] == 3 else example.mean(axis=-1)
    return example


def _filter_picture(kernel: np.ndarray) -> np.ndarray:
    """One filter as a picture: 3-D filters [t, kh, kw, C] as their t slices side by side."""
    if kernel.ndim == 4:
        kernel = np.concatenate(list(kernel), axis=1)  # [kh, t * kw, C]
    return as_picture(kernel)


def grid(count: int, max_cols: int, width: float, height: float):
    """A figure with `count` panels in balanced rows of at most `max_cols`, axes hidden."""
    nrows = -(-count // max_cols)
    ncols = -(-count // nrows)
    size = (width * ncols, height * nrows + 0.8)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_filters(filters: np.ndarray, path: str, title: str, notes: list[str] = ()) -> str:
    """Filters [N, ..., C_in] as a grid: gray-channel filters on a diverging map symmetric
    around zero (each to its own max |w|), RGB filters min-max scaled; `notes[i]` goes under
    filter i's number."""
    pictures = [_filter_picture(f) for f in filters[:MAX_FILTERS]]
    fig, axes = grid(len(pictures), 8, 1.4, 1.5)
    for index, (ax, picture) in enumerate(zip(axes.flat, pictures, strict=False)):
        if picture.ndim == 3:
            low, high = picture.min(), picture.max()
            ax.imshow((picture - low) / max(high - low, 1e-12), interpolation="nearest")
        else:
            limit = max(float(np.abs(picture).max()), 1e-12)
            ax.imshow(picture, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        note = f"\n{notes[index]}" if index < len(notes) else ""
        ax.set_title(f"#{index}{note}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def draw_activation_stats(stats: dict[str, dict], path: str, title: str) -> str:
    """Histograms of each layer's nonzero outputs, then one bar chart across layers of the
    fractions of zero outputs, dead and saturated units and the mean |correlation|."""
    names = list(stats)
    shown = spread(names, MAX_HISTOGRAMS)
    ncols = min(len(shown), 4)
    nrows = -(-len(shown) // ncols) + 1
    fig = Figure(figsize=(3.4 * ncols, 2.4 * nrows + 0.6), layout="constrained")
    cells = fig.add_gridspec(nrows, ncols)
    for index, name in enumerate(shown):
        ax, layer = fig.add_subplot(cells[index // ncols, index % ncols]), stats[name]
        ax.stairs(layer["histogram"]["counts"], layer["histogram"]["edges"], fill=True)
        ax.set_title(
            f"{name} {tuple(layer['shape'])}\nmean {layer['mean']:.2f}, std {layer['std']:.2f}, "
            f"zeros {layer['zero_fraction']:.0%} (not drawn)",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    series = [("zero outputs", "zero_fraction"), ("dead units", "dead_fraction")]
    if stats[names[0]]["saturated_fraction"] is not None:
        series.append(("saturated", "saturated_fraction"))
    series.append(("mean |corr| between units", "mean_abs_correlation"))
    bars = fig.add_subplot(cells[-1, :])
    width, positions = 0.8 / len(series), np.arange(len(names))
    for offset, (label, key) in enumerate(series):
        heights = [stats[name][key] or 0.0 for name in names]
        drawn = bars.bar(positions + offset * width, heights, width, label=label)
        bars.bar_label(drawn, fmt="%.2f", fontsize=6)
    bars.set_xticks(positions + 0.4 - width / 2, names, fontsize=7, rotation=20, ha="right")
    bars.set_ylim(0, 1.1)
    bars.set_ylabel("fraction")
    bars.legend(fontsize=7, ncols=len(series), loc="upper left")
    fig.suptitle(f"activations per layer: {title}", fontsize=10)
    return save(fig, path)


def draw_feature_maps(picture: np.ndarray, maps: np.ndarray, path: str, title: str) -> str:
    """The input picture, then the first channels of one example's layer output: [H, W, C] one
    panel per channel, [L, C] one panel of channels x positions, [T, H, W, C] its middle frame."""
    if maps.ndim == 4:
        maps = maps[maps.shape[0] // 2]
    if maps.ndim == 2:
        panels = [(f"channels 0-{min(maps.shape[1], MAX_CHANNELS) - 1} x positions",
                   maps[:, :MAX_CHANNELS].T)]  # fmt: skip
    else:
        panels = [(f"channel {c}", maps[..., c]) for c in range(min(maps.shape[-1], MAX_CHANNELS))]
    panels = [("input", as_picture(picture)), *panels]
    fig, axes = grid(len(panels), 9, 1.6, 1.8)
    for index, (ax, (name, panel)) in enumerate(zip(axes.flat, panels, strict=False)):
        cmap = "gray" if index == 0 else "viridis"
        ax.imshow(
            panel, cmap=cmap, interpolation="nearest", aspect="auto" if maps.ndim == 2 else None
        )
        ax.set_title(name if index == 0 else f"{name}\nmax {float(panel.max()):.2f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def _map_picture(values: np.ndarray, width: int, signed: bool) -> np.ndarray:
    """One example's map as a picture: [L] a stripe per position; [T, H, W] the max over T
    (the mean for signed maps, where a max would hide the negative frames)."""
    if values.ndim == 1:
        return np.repeat(values[:, None], width, axis=1)
    if values.ndim == 3:
        return values.mean(axis=0) if signed else values.max(axis=0)
    return values


def draw_attributions(
    pictures: np.ndarray,
    captions: list[tuple[str, str]],
    rows: list[tuple[str, np.ndarray, bool]],
    path: str,
    title: str,
    *,
    mark_center: bool = False,
) -> str:
    """One column per example: its picture ([B, ...] in [0, 1]) under `captions[b]` (text,
    color), then one row per (label, maps [B, *spatial], signed) of `rows`. Unsigned maps go on
    "hot" from 0 to their max; signed ones on a diverging map symmetric around 0 (red raises the
    class's score); each panel's title gives its scale. `mark_center` marks the center pixel
    (segmentation: the pixel whose score is explained)."""
    count = len(pictures)
    fig, axes = grid((1 + len(rows)) * count, count, 1.9, 1.8)
    for b in range(count):
        shown = as_picture(pictures[b])
        axes[0, b].imshow(shown, cmap=None if shown.ndim == 3 else "gray")
        axes[0, b].set_title(captions[b][0], fontsize=7, color=captions[b][1])
        if mark_center:
            axes[0, b].plot(shown.shape[1] // 2, shown.shape[0] // 2, "c+", markersize=10)
        for ax, (_, maps, signed) in zip(axes[1:, b], rows, strict=True):
            values = _map_picture(np.asarray(maps[b]), shown.shape[1], signed)
            limit = max(float(np.abs(values).max()), 1e-12)
            if signed:
                ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
                ax.set_title(f"\u00b1{limit:.2g}", fontsize=6)
            else:
                ax.imshow(values, cmap="hot", vmin=0, vmax=limit)
                ax.set_title(f"max {limit:.2g}", fontsize=6)
    for ax, (label, _, _) in zip(axes[1:, 0], rows, strict=True):
        ax.text(-0.12, 0.5, label, transform=ax.transAxes, rotation=90, ha="right",
                va="center", fontsize=8)  # fmt: skip
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def _tile_grid(rows: list[list[np.ndarray]], gap: int, below: int) -> np.ndarray:
    """Pictures of one shape in a grid (white between them: `gap` pixels, `below` under each
    row for its labels), as one image."""
    tile = rows[0][0]
    height, width = tile.shape[:2]
    cols = max(map(len, rows))
    out = np.ones(
        (len(rows) * (height + below), cols * (width + gap) - gap, *tile.shape[2:]), tile.dtype
    )
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            top, left = r * (height + below), c * (width + gap)
            out[top : top + height, left : left + width] = picture
    return out


def _tile(example: np.ndarray, box: np.ndarray | None, widen: int) -> np.ndarray:
    """An example as a picture of the top activations: a clip [T, H, W, C] by the middle frame
    of the unit's box (around its peak; `as_picture` without a box), columns repeated `widen`
    times."""
    if example.ndim == 4 and box is not None and len(box) == 3:
        example = example[(box[0, 0] + box[0, 1]) // 2]
    return np.repeat(as_picture(example), widen, axis=1)


def _box_patch(box: np.ndarray, left: int, top: int, width: int, widen: int) -> Rectangle:
    """The outline of `box` [S, 2] (rows and columns: the last two axes; 1-D: rows and every
    column) on the tile at (left, top), `widen` times wider than the input."""
    (r0, r1), (c0, c1) = (box[0], (0, width // widen - 1)) if len(box) == 1 else box[-2:]
    c0, c1 = c0 * widen, (c1 + 1) * widen - 1
    corner = (left + c0 - 0.5, top + r0 - 0.5)
    return Rectangle(corner, c1 - c0 + 1, r1 - r0 + 1, fill=False, edgecolor="cyan", linewidth=0.8)


def draw_top_activations(
    top, pictures: dict[int, np.ndarray], units: list[int], path: str, title: str
) -> str:
    """One row per unit of `units` of `top` (a top_activations.TopUnits): its top examples,
    best first (`pictures[index]`: in [0, 1]), each labeled with the unit's value and the
    example's index, and for a conv unit the box of input pixels it sees at its peak.
    One image with text on it (not an axes per picture): fast to draw for many units."""
    k = top.indices.shape[1]
    height, width = as_picture(pictures[int(top.indices[units[0], 0])]).shape[:2]
    # Narrow pictures (1-D inputs: L x C) widened, columns repeated, to room for their labels.
    widen = max(1, -(-height // (2 * width)))
    width *= widen
    gap, below = max(1, width // 14), max(6, height * 2 // 7)  # room for one line of text
    boxes = {u: [None] * k if top.boxes is None else top.boxes[u] for u in units}
    rows = [
        [_tile(pictures[int(i)], b, widen) for i, b in zip(top.indices[u], boxes[u], strict=True)]
        for u in units
    ]
    inches = 0.9  # per picture: 100 pixels at 110 dpi
    size = (inches * k + 0.8, inches * len(units) * (height + below) / height + 0.6)
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    mosaic = _tile_grid(rows, gap, below)
    gray = mosaic.ndim == 2
    ax.imshow(mosaic, cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    row_centers = np.arange(len(units)) * (height + below) + (height - 1) / 2
    ax.set_yticks(row_centers, [f"unit {u}" for u in units], fontsize=8)
    ax.tick_params(length=0)
    for r, unit in enumerate(units):
        top_edge = r * (height + below)
        for c, (index, value) in enumerate(zip(top.indices[unit], top.values[unit], strict=True)):
            left = c * (width + gap)
            label = f"{value:.2f} #{index}"
            ax.text(left + width / 2, top_edge + height, label, ha="center", va="top", fontsize=6)
            if boxes[unit][c] is not None:
                ax.add_patch(_box_patch(boxes[unit][c], left, top_edge, width, widen))
    fig.suptitle(title, fontsize=9)
    return save(fig, path)

"""Figures of segmentation results and loss profiles, drawn without pyplot.

Each function builds a :class:`matplotlib.figure.Figure` on the Agg canvas (no display, no global
pyplot state, safe in worker processes) and, given a ``path``, also writes it as a PNG atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nbs_gym.io import write_atomic

__all__ = ["profile_figure", "save_figure", "segmentation_figure"]

_PANEL_INCHES = 2.2
_QUANTILES = (0.25, 0.75)
_ANOMALOUS_COLOUR = "tab:red"
_NORMAL_COLOUR = "tab:blue"


def segmentation_figure(
    images: np.ndarray,
    masks: np.ndarray,
    score_maps: Mapping[str, np.ndarray],
    names: Sequence[str] | None = None,
    defect_types: Sequence[str] | None = None,
    max_rows: int | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A grid of example images: image | ground truth | one column per anomaly map, with its colour bar.

    Given ``defect_types``, the rows are one image of each defect type, then one normal image (or
    ``max_rows`` rows: the types in turn, then normal images); without them, anomalous images first,
    then normal ones, 4 rows unless ``max_rows`` says otherwise. Each map column has one colour scale
    over its rows, shown by a colour bar, so that rows of one column compare directly.

    Args:
        images: ``(N, C, H, W)`` images in [0, 1], C = 1 or 3.
        masks: ``(N, H, W)`` ground-truth masks.
        score_maps: Column title -> ``(N, H, W)`` anomaly map, e.g. ``{"predictor": ..., "final loss":
            ...}``.
        names: Optional row labels, one per image (default: the defect types, when given).
        defect_types: Optional defect type per image (``"good"`` for normal ones).
        max_rows: Most images shown; default as above.
        path: Where to write the PNG; ``None`` writes nothing.

    Returns:
        The figure.
    """
    masks = np.asarray(masks)
    rows = _example_rows(masks, defect_types)
    if max_rows is None and defect_types is not None:
        anomalous = masks.reshape(len(masks), -1).any(axis=1)
        n_types = len({defect_types[int(i)] for i in np.flatnonzero(anomalous)})
        rows = np.concatenate([rows[:n_types], rows[anomalous.sum() :][:1]])
    else:
        rows = rows[: max_rows or 4]
    if names is None and defect_types is not None:
        names = list(defect_types)
    columns = ["image", "ground truth", *score_maps]
    figure = _figure(len(rows), len(columns), width=_PANEL_INCHES * len(columns) + 0.8)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    for column, title in enumerate(columns):
        axes[0, column].set_title(title)
    shown = {title: np.asarray(scores)[rows] for title, scores in score_maps.items()}
    for row, index in enumerate(rows):
        image = images[index]
        axes[row, 0].imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        axes[row, 1].imshow(masks[index], cmap="gray", vmin=0, vmax=1)
        for column, maps in enumerate(shown.values(), start=2):
            drawn = axes[row, column].imshow(maps[row], cmap="inferno", vmin=maps.min(), vmax=maps.max())
            if row == len(rows) - 1:
                figure.colorbar(drawn, ax=axes[:, column], location="bottom", shrink=0.9, label="anomaly score")
        if names is not None:
            axes[row, 0].set_ylabel(names[index], fontsize="small")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if path is not None:
        save_figure(figure, path)
    return figure


def profile_figure(
    loss_maps: np.ndarray,
    masks: np.ndarray,
    snapshot_steps: np.ndarray,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Mean loss profile of anomalous and of normal pixels, with their 25-75 % quantile bands.

    Args:
        loss_maps: ``(K, N, H, W)`` loss maps of N images at the K snapshots.
        masks: ``(N, H, W)`` ground-truth masks of those images.
        snapshot_steps: ``(K,)`` autoencoder updates at each snapshot (the x axis).
        title: Optional figure title.
        path: Where to write the PNG; ``None`` writes nothing.

    Returns:
        The figure; the y axis (loss) is logarithmic. A class without pixels is left out of the plot.
    """
    profiles = np.asarray(loss_maps, dtype=np.float64).reshape(len(loss_maps), -1)
    labels = np.asarray(masks, dtype=bool).ravel()
    figure = _figure(1, 1, width=5.5, height=3.5)
    axis = figure.subplots()
    for label, is_anomalous, colour in (("anomalous", True, _ANOMALOUS_COLOUR), ("normal", False, _NORMAL_COLOUR)):
        selected = profiles[:, labels == is_anomalous]
        if selected.shape[1] == 0:
            continue
        low, high = np.quantile(selected, _QUANTILES, axis=1)
        axis.fill_between(snapshot_steps, low, high, color=colour, alpha=0.25, linewidth=0)
        axis.plot(snapshot_steps, selected.mean(axis=1), color=colour, marker="o", label=f"{label} pixels (mean)")
    axis.set_yscale("log")
    axis.set_xlabel("autoencoder updates")
    axis.set_ylabel("reconstruction loss")
    axis.legend(title=f"bands: {_QUANTILES[0]:.0%}-{_QUANTILES[1]:.0%} quantiles", fontsize="small")
    if title is not None:
        axis.set_title(title)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically; returns the path written."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
    return path


def _example_rows(masks: np.ndarray, defect_types: Sequence[str] | None) -> np.ndarray:
    """Image indices in display order: anomalous ones (types interleaved if known), then normal ones."""
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    ordered = np.flatnonzero(anomalous)
    if defect_types is not None:
        # Rank of each image within its type, then a stable sort by it: type A #0, type B #0, A #1, ...
        seen: dict[str, int] = {}
        rank = np.empty(len(ordered), dtype=np.int64)
        for position, index in enumerate(ordered.tolist()):
            rank[position] = seen.get(defect_types[index], 0)
            seen[defect_types[index]] = int(rank[position]) + 1
        ordered = ordered[np.argsort(rank, kind="stable")]
    return np.concatenate([ordered, np.flatnonzero(~anomalous)])


def _figure(rows: int, columns: int, width: float | None = None, height: float | None = None) -> Figure:
    """A figure on its own Agg canvas, sized by its panel grid unless given explicitly."""
    figure = Figure(figsize=(width or _PANEL_INCHES * columns, height or _PANEL_INCHES * rows))
    FigureCanvasAgg(figure)
    return figure

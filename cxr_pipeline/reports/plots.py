"""Figures for reports, drawn with matplotlib's non-interactive backend, returned as RGB arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _to_array(figure) -> np.ndarray:
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    plt.close(figure)
    return rgba[..., :3].astype(np.float32) / 255.0


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, ylabel: str,
              log_y: bool = False) -> np.ndarray:
    """One line per name: (steps, values)."""
    figure, axis = plt.subplots(figsize=(6.0, 3.2), dpi=100)
    for name, (steps, values) in series.items():
        axis.plot(steps, values, label=name, linewidth=1.2)
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    if log_y:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _to_array(figure)


def interval_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
                  title: str, xlabel: str, ylabel: str, shade: tuple[float, float] | None = None) -> np.ndarray:
    """One line of means with interval bars per name: (x, mean, low, high); a zero line, and
    ``shade`` (x from, x to) marked, for example a training range."""
    figure, axis = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    if shade is not None:
        axis.axvspan(*shade, color="tab:blue", alpha=0.08, label="training range")
    axis.axhline(0.0, color="black", linewidth=0.8)
    for name, (xs, means, lows, highs) in series.items():
        means, lows, highs = (np.asarray(v, dtype=float) for v in (means, lows, highs))
        axis.errorbar(xs, means, yerr=[means - lows, highs - means], label=name, marker="o", markersize=4,
                      linewidth=1.2, capsize=3)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _to_array(figure)


def heat_maps(maps: np.ndarray, images: np.ndarray, title: str, vmax: float | None = None) -> np.ndarray:
    """Pairs of image | heat map (shared colour scale, with a colour bar), one pair per column."""
    count = len(maps)
    vmax = float(np.max(maps)) if vmax is None else vmax
    figure, axes = plt.subplots(2, count, figsize=(1.4 * count + 0.8, 3.2), dpi=100, squeeze=False)
    shown = None
    for column in range(count):
        axes[0, column].imshow(images[column], cmap="gray", vmin=0, vmax=1)
        shown = axes[1, column].imshow(maps[column], cmap="magma", vmin=0, vmax=vmax)
        for row in range(2):
            axes[row, column].set_axis_off()
    figure.suptitle(title, fontsize=9)
    figure.colorbar(shown, ax=axes[1, :].tolist(), fraction=0.03, pad=0.02)
    return _to_array(figure)

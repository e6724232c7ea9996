"""Figures for reports, drawn with matplotlib's non-interactive backend, returned as RGB arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _to_array(figure) -> np.ndarray:
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    plt.close(figure)
    return rgba[..., :3].astype(np.float32) / 255.0


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, ylabel: str, log_y: bool = False
) -> np.ndarray:
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


def interval_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    shade: tuple[float, float] | None = None,
) -> np.ndarray:
    """One line of means with interval bars per name: (x, mean, low, high); a zero line, and
    ``shade`` (x from, x to) marked, for example a training range."""
    figure, axis = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    if shade is not None:
        axis.axvspan(*shade, color="tab:blue", alpha=0.08, label="training range")
    axis.axhline(0.0, color="black", linewidth=0.8)
    for name, (xs, mean_list, low_list, high_list) in series.items():
        means, lows, highs = (np.asarray(v, dtype=float) for v in (mean_list, low_list, high_list))
        axis.errorbar(
            xs,
            means,
            yerr=[means - lows, highs - means],
            label=name,
            marker="o",
            markersize=4,
            linewidth=1.2,
            capsize=3,
        )
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _to_array(figure)


def grouped_interval_bars(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    title: str,
    ylabel: str,
    floor: float | None = None,
) -> np.ndarray:
    """Bars per group, one per series (value, low, high) with its interval; ``floor`` draws a
    reference line (0.5 for AUROC: chance). A NaN value leaves its bar out."""
    figure, axis = plt.subplots(figsize=(min(10.0, max(6.0, 0.4 * len(groups) * max(1, len(series)))), 3.8), dpi=100)
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(groups), dtype=float)
    for i, (name, (value_list, low_list, high_list)) in enumerate(series.items()):
        values, lows, highs = (np.asarray(v, dtype=float) for v in (value_list, low_list, high_list))
        shown = np.isfinite(values)
        x = positions[shown] - 0.4 + width * (i + 0.5)
        errors = np.nan_to_num([values[shown] - lows[shown], highs[shown] - values[shown]], nan=0.0)
        axis.bar(
            x,
            values[shown],
            width * 0.92,
            label=name,
            yerr=np.clip(errors, 0.0, None),
            capsize=2,
            error_kw={"linewidth": 0.9},
        )
    if floor is not None:
        axis.axhline(floor, color="black", linewidth=0.8, linestyle="--")
    axis.set_xticks(positions, list(groups), rotation=15, fontsize=8)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(
        fontsize=7, ncols=min(6, max(1, len(series))), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False
    )
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
    if shown is not None:
        figure.colorbar(shown, ax=axes[1, :].tolist(), fraction=0.03, pad=0.02)
    return _to_array(figure)


def prompt_grid(
    samples: np.ndarray, prompts: Sequence[str], reals: np.ndarray | None = None, columns: int = 3, wrap: int = 46
) -> np.ndarray:
    """Report text beside what it produced: per prompt, the real image (when given) and the sample,
    with the text wrapped under them."""
    import textwrap

    count = len(samples)
    rows = (count + columns - 1) // columns
    per = 2 if reals is not None else 1
    figure, axes = plt.subplots(rows, columns * per, figsize=(2.3 * columns * per, 2.9 * rows), dpi=90, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for index in range(count):
        row, column = divmod(index, columns)
        pair = [reals[index], samples[index]] if reals is not None else [samples[index]]
        for offset, (image, label) in enumerate(
            zip(pair, ["real", "generated"] if reals is not None else ["generated"])
        ):
            axis = axes[row, column * per + offset]
            axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_title(label, fontsize=7)
        text = "\n".join(textwrap.wrap(prompts[index], wrap)[:7])
        axes[row, column * per].text(
            0.0, -0.04, text, transform=axes[row, column * per].transAxes, fontsize=6, va="top", ha="left"
        )
    figure.tight_layout(h_pad=4.0)
    return _to_array(figure)


def sweep_plot(sweep, chosen: float) -> np.ndarray:
    """Consistency and fd_cxr against the guidance scale (val), the chosen scale marked."""
    figure, left = plt.subplots(figsize=(6.0, 3.2), dpi=100)
    right = left.twinx()
    left.plot(sweep["guidance"], sweep["consistency"], marker="o", color="tab:blue", label="prompt consistency")
    right.plot(sweep["guidance"], sweep["fd_cxr"], marker="s", color="tab:red", label="fd_cxr")
    right.axhline(
        float(sweep["fd_cxr_real_reference"].iloc[0]),
        color="tab:red",
        linestyle=":",
        linewidth=1,
        label="fd_cxr, real vs real",
    )
    left.axvline(chosen, color="black", linewidth=0.8, linestyle="--")
    left.set_xlabel("guidance scale w")
    left.set_ylabel("prompt consistency", color="tab:blue")
    right.set_ylabel("fd_cxr", color="tab:red")
    left.set_title("Classifier-free guidance on val")
    left.grid(alpha=0.3)
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(lines, labels, fontsize=7, loc="best")
    figure.tight_layout()
    return _to_array(figure)


def tradeoff_plot(points: Mapping[str, tuple], title: str) -> np.ndarray:
    """One point per method, ``name -> (detail summary, PSNR summary)`` (each with ``mean``,
    ``ci_low``, ``ci_high``): fine detail across, PSNR up, both with their intervals, and the
    truth's detail (1) marked."""
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    axis.axvline(1.0, color="black", linewidth=0.8, linestyle="--", label="the truth's detail")
    for name, (detail, psnr) in points.items():
        axis.errorbar(
            [detail.mean],
            [psnr.mean],
            xerr=[[detail.mean - detail.ci_low], [detail.ci_high - detail.mean]],
            yerr=[[psnr.mean - psnr.ci_low], [psnr.ci_high - psnr.mean]],
            marker="o",
            markersize=5,
            capsize=3,
            linewidth=1.0,
            label=name if len(name) <= 48 else name[:45] + "...",
        )
    axis.set_xscale("log")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("fine-detail ratio (log scale; 1 = the truth)")
    axis.set_ylabel("PSNR (dB)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return _to_array(figure)

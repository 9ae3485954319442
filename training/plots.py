"""Pictures people would rather look at than read: training curves and landmark overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["overlay_grid", "plot_curves", "save_pair_samples"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: Path | str, title: str, loss_key: str = "loss",
                metric_key: str | None = None, metric_label: str = "", stage_starts: Sequence[int] = ()) -> None:
    """Loss per step (smoothed) and an optional validation metric on a second axis; a dashed line
    at each of `stage_starts` (where a continuation run began)."""
    plt = _pyplot()
    steps = [h["step"] for h in history if loss_key in h]
    losses = np.array([h[loss_key] for h in history if loss_key in h])
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(losses):
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[: len(smooth)], smooth, color="tab:blue", label=loss_key)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_key, color="tab:blue")
    for step in stage_starts:
        ax.axvline(step, color="grey", linestyle="--", linewidth=1)
    if metric_key:
        pts = [(h["step"], h[metric_key]) for h in history if metric_key in h]
        if pts:
            ax2 = ax.twinx()
            ax2.plot(*zip(*pts), "o-", color="tab:red")
            ax2.set_ylabel(metric_label or metric_key, color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay_grid(images: np.ndarray, points: np.ndarray, path: Path | str, truth: np.ndarray | None = None,
                 cols: int = 4, edges: Sequence[tuple[int, int]] = ()) -> None:
    """Draw (N, K, 2) points (colour per landmark) over (N, H, W, 3) images in [0, 1]."""
    plt = _pyplot()
    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    colours = plt.cm.tab20(np.linspace(0, 1, points.shape[1]))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.clip(images[i], 0, 1))
        h, w = images[i].shape[:2]
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        for a, b in edges:
            ax.plot(points[i, [a, b], 0], points[i, [a, b], 1], "-", color="white", lw=1, alpha=0.7)
        if truth is not None:
            ax.scatter(truth[i, :, 0], truth[i, :, 1], s=10, c="none", edgecolors="white", linewidths=0.8)
        ax.scatter(points[i, :, 0], points[i, :, 1], s=14, c=colours, edgecolors="black", linewidths=0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_pair_samples(path: Path | str, target, deformed, recon, points_input: np.ndarray) -> None:
    """`landmarks adapt`'s picture: rows y, y', the reconstruction of y, and the landmarks on y
    ((B, 3, S, S) tensors in [0, 1] on any device; points (B, K, 2) in input pixels)."""
    plt = _pyplot()
    n = min(6, len(target))
    fig, axes = plt.subplots(4, n, figsize=(1.8 * n, 7.4), squeeze=False)
    colours = plt.cm.tab10(np.linspace(0, 1, points_input.shape[1]))
    rows = [("y (target)", target), ("y' (deformed)", deformed), ("reconstruction", recon), ("landmarks on y", target)]
    for r, (title, batch) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(batch[i].float().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.axis("off")
            if r == 3:
                ax.scatter(points_input[i, :, 0], points_input[i, :, 1], s=16, c=colours, edgecolors="black",
                           linewidths=0.4)
            if i == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""Figures of the training stages (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msn_cli.io.atomic import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Loss curves (left) and mIoU curves (right) per epoch."""
    plt = _figure()
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] for r in history]
    keys = sorted({k for r in history for k in r})
    for k in keys:
        values = [r.get(k) for r in history]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            continue
        if k.startswith("loss"):
            ax_loss.plot(epochs, values, marker="o", label=k)
        elif "miou" in k:
            ax_iou.plot(epochs, values, marker="o", label=k)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    ax_iou.set(xlabel="epoch", ylabel="mIoU", title=f"{title}: mIoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_gap_layers(stats: dict[str, Any], path: Path) -> None:
    """Fig. 1-like: per candidate layer, activation mean and variance for X1, X2, X3."""
    plt = _figure()
    layers = list(stats["layers"])
    chosen = set(stats["chosen"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    width = 0.27
    for ax, what in zip(axes[:2], ("mean", "variance"), strict=True):
        for j, scale in enumerate(("x1", "x2", "x3")):
            vals = [stats["layers"][name][scale][what] for name in layers]
            xs = [i + (j - 1) * width for i in range(len(layers))]
            ax.bar(xs, vals, width, label=scale.upper())
        ax.set_title(f"activation {what}")
        if what == "variance":
            ax.set_yscale("log")
    scores = [stats["layers"][name]["score"] for name in layers]
    colors = ["tab:red" if name in chosen else "tab:gray" for name in layers]
    axes[2].bar(range(len(layers)), scores, color=colors)
    axes[2].set_title("gap score (red: chosen gap layers)")
    for ax in axes:
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)

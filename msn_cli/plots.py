"""The figures msn draws, in one place (matplotlib's object API: no display, no pyplot state).

* :func:`training_curves`: every numeric key of a stage's history against the epoch, losses
  left and scores right (``evaluate --figures``: ``training_<stage>.png``; Figs. 5 and 6);
* :func:`gap_figure`: per-layer activation mean and variance of the frozen meta-branch for X1,
  X2 and X3, with the gap score (``evaluate --figures``: ``gap_layers.png``; Fig. 1);
* :func:`patch_grid`: test patches, their labels and each output's prediction (Fig. 4);
* :func:`plot_curves`: a comparison of runs' mIoU per epoch (``evaluate --compare --curve``).

Each figure is written atomically as a PNG by :func:`save`. The training stages draw their
own ``curves.png`` and ``gap_layers.png`` with the same two functions.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.io.atomic import atomic_write_bytes
from msn_cli.palette import colorize, matplotlib_colors
from msn_cli.vocab import BRANCHES, LABELS

#: History keys that are not curves (bookkeeping), and suffixes of such keys.
_SKIP_KEYS = {"epoch", "seconds", "time", "lr", "learning_rate", "step", "steps", "timestamp"}
_SKIP_SUFFIXES = ("_per_s", "_seconds")
#: ``savefig`` arguments of the ``evaluate --figures`` figures (no software tag: stable bytes).
_PAPER = {"metadata": {"Software": None}}


def figure(width: float, height: float):
    """A new figure of ``width`` x ``height`` inches at 100 dpi."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def save(fig, path: Path, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically (``savefig``: matplotlib's options)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# -- training curves ----------------------------------------------------------------------------
def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in _SKIP_KEYS
            and not key.endswith(_SKIP_SUFFIXES)
            and np.isfinite(value)
        ):
            out[name] = float(value)
    return out


def training_curves(stage: str, history: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss-like keys against the epoch on the left, other scores on the right."""
    if not history:
        return None
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    series: dict[str, list[tuple[float, float]]] = {}
    for e, record in zip(epochs, history, strict=True):
        for key, v in _flatten(record).items():
            series.setdefault(key, []).append((e, v))
    if not series:
        return None
    fig = figure(10, 4)
    losses, scores = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key in sorted(series):
        ax = losses if "loss" in key.lower() else scores
        xs, ys = zip(*series[key], strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, label=key)
    from matplotlib.ticker import MaxNLocator

    for ax, title in ((losses, "loss"), (scores, "scores")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{stage}: {title}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, **_PAPER)


# -- gap-layer statistics -----------------------------------------------------------------------
@dataclass
class GapStats:
    """Fig. 1's data: per candidate layer, the activation mean and variance of each input
    scale, the chosen gap layers and, when recorded, each layer's gap score."""

    layers: list[str]
    mean: dict[str, list[float]]  # scale -> per layer
    var: dict[str, list[float]]
    gap_layers: list[str]
    score: list[float] | None = None  # per layer, when recorded


def _value(v: Any) -> float:
    return float(np.mean(np.asarray(v, dtype=np.float64)))


def parse_gap_stats(data: Any) -> GapStats | None:
    """The per-layer statistics of a ``gap_layers.json`` as ``train-memrm`` writes it
    (:func:`msn_cli.training.gaps.layer_statistics`, plus the chosen layers)::

        {"layers": {name: {"x1": {"mean", "variance"}, "x2": ..., "x3": ..., "score", ...}},
         "chosen": [names], ...}

    Returns None when no layer has statistics.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("layers"), Mapping):
        return None
    chosen = data.get("chosen")
    gap_layers = [str(c) for c in chosen] if isinstance(chosen, list) else []
    names: list[str] = []
    mean: dict[str, list[float]] = {}
    var: dict[str, list[float]] = {}
    score: list[float] = []
    for name, rec in data["layers"].items():
        if not isinstance(rec, Mapping):
            continue
        per = {s: rec[s] for s in BRANCHES if isinstance(rec.get(s), Mapping) and "mean" in rec[s]}
        if not per:
            continue
        names.append(str(name))
        if isinstance(rec.get("score"), (int, float)):
            score.append(float(rec["score"]))
        for s in BRANCHES:
            stats = per.get(s, {})
            mean.setdefault(s, []).append(_value(stats["mean"]) if "mean" in stats else math.nan)
            var.setdefault(s, []).append(
                _value(stats["variance"]) if "variance" in stats else math.nan
            )
    if not names:
        return None
    return GapStats(names, mean, var, gap_layers, score if len(score) == len(names) else None)


def gap_figure(stats: GapStats, path: Path) -> Path:
    """Mean and variance per layer and scale (and the gap score), gap layers in red."""
    panels = [("mean", stats.mean), ("variance", stats.var)]
    rows = len(panels) + (stats.score is not None)
    fig = figure(max(6.0, 0.35 * len(stats.layers) + 2), 3 * rows)
    x = np.arange(len(stats.layers))
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    for ax, (what, values) in zip(axes, panels, strict=False):
        for s in BRANCHES:
            if s in values and len(values[s]) == len(x):
                ax.plot(x, values[s], marker="o", markersize=3, label=s.upper())
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
        if what == "variance" and all(v > 0 for vs in values.values() for v in vs):
            ax.set_yscale("log")
    if stats.score is not None:
        colors = ["tab:red" if n in stats.gap_layers else "tab:gray" for n in stats.layers]
        axes[-1].bar(x, stats.score, color=colors)
        axes[-1].set_ylabel("gap score")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(stats.layers, rotation=90, fontsize=7)
        for tick, name in zip(ax.get_xticklabels(), stats.layers, strict=True):
            if name in stats.gap_layers:
                tick.set_color("red")
        ax.grid(alpha=0.3)
    fig.suptitle("activation statistics of the frozen meta-branch (gap layers in red)")
    fig.tight_layout()
    return save(fig, path, **_PAPER)


# -- patches ------------------------------------------------------------------------------------
def patch_grid(shown, classes: list[str], path: Path) -> Path | None:
    """Fig. 4: per patch, each branch's image, label and prediction, then the fusion
    (``shown``: :class:`~msn_cli.evaluation.store.Shown`)."""
    from matplotlib.patches import Patch

    if not shown.names:
        return None
    nc = len(classes)
    cols: list[tuple[str, np.ndarray]] = []
    for b, y in zip(BRANCHES, LABELS, strict=True):
        cols.append((b.upper(), shown.images[b]))
        cols.append((f"label {y.upper()}", colorize(shown.labels[y], nc)))
        if b in shown.preds:
            cols.append((f"pred {b.upper()}", colorize(shown.preds[b], nc)))
    if "fusion" in shown.preds:
        cols.append(("pred fusion", colorize(shown.preds["fusion"], nc)))
    k = len(shown.names)
    fig = figure(1.6 * len(cols), 1.6 * k + 0.8)
    for i in range(k):
        for j, (title, arr) in enumerate(cols):
            ax = fig.add_subplot(k, len(cols), i * len(cols) + j + 1)
            ax.imshow(arr[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(shown.names[i], fontsize=6)
    handles = [Patch(color=c, label=n) for c, n in zip(matplotlib_colors(nc), classes, strict=True)]
    handles.append(Patch(color=(200 / 255,) * 3, label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, path, **_PAPER)


# -- comparison curves --------------------------------------------------------------------------
def plot_curves(table, path: Path) -> None:
    """One line per column of a :func:`~msn_cli.evaluation.curves.curve_table` (mIoU in
    percent against the epoch)."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    for j, header in enumerate(table.columns[1:], 1):
        points = [(row[0], 100 * row[j]) for row in table.rows if row[j] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=header)
    ax.set(xlabel="epoch", ylabel="mIoU (%)", title=table.title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path, dpi=110, bbox_inches="tight")

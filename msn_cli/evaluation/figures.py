"""The paper's figures from a checkpoint directory and an evaluation.

* ``training_<stage>.png`` (Figs. 5 and 6): every numeric key of each stage's
  ``history.jsonl`` against the epoch; losses on the left, scores (mIoU, ...) on the right.
* ``gap_layers.png`` (Fig. 1): per-layer activation mean and variance of the frozen meta-branch
  for X1, X2 and X3 (and the gap score when recorded), gap layers in red, from
  ``memrm/gap_layers.json`` as ``train-memrm`` writes it (``memrm/gap_stats.json`` is read too);
  skipped with a warning when neither exists or neither holds per-layer statistics.
* ``patches.png`` (Fig. 4): test patches, their labels and each output's prediction.

matplotlib (Agg, no display) is imported inside the functions; files are written atomically.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.io.atomic import atomic_write_bytes
from msn_cli.io.checkpoints import STAGES, CheckpointDir
from msn_cli.palette import colorize, matplotlib_colors

SCALES = ("x1", "x2", "x3")
_SKIP_KEYS = {"epoch", "seconds", "time", "lr", "learning_rate", "step", "steps", "timestamp"}
_SKIP_SUFFIXES = ("_per_s", "_seconds")


class FigureWarning(UserWarning):
    """A figure that could not be drawn (missing input); the others are still written."""


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
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
    fig = _figure(10, 4)
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
    return _save(fig, path)


# -- gap-layer statistics -----------------------------------------------------------------------
#: Where ``train-memrm`` saves the Fig. 1 statistics, first match wins.
GAP_FILES = ("gap_layers.json", "gap_stats.json")


@dataclass
class GapStats:
    layers: list[str]
    mean: dict[str, list[float]]  # scale -> per layer
    var: dict[str, list[float]]
    gap_layers: list[str]
    score: list[float] | None = None  # per layer, when recorded


_MEAN = ("mean", "means", "mu")
_VAR = ("var", "variance", "vars", "variances")
_CHOSEN = ("gap_layers", "chosen", "selected", "gaps", "top")


def _value(v: Any) -> float:
    return float(np.mean(np.asarray(v, dtype=np.float64)))


def _first(d: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((d[k] for k in keys if k in d), None)


def _scale_key(k: str) -> str | None:
    k = str(k).lower()
    return k if k in SCALES else None


def _record_stats(rec: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, var) by scale of one layer, from {mean: {x1..}, var: {..}} or {x1: {mean, var}}."""
    mean, var = _first(rec, _MEAN), _first(rec, _VAR)
    if isinstance(mean, Mapping) and isinstance(var, Mapping):
        return (
            {s: _value(v) for k, v in mean.items() if (s := _scale_key(k))},
            {s: _value(v) for k, v in var.items() if (s := _scale_key(k))},
        )
    m, v = {}, {}
    for k, sub in rec.items():
        s = _scale_key(k)
        if s and isinstance(sub, Mapping) and _first(sub, _MEAN) is not None:
            m[s] = _value(_first(sub, _MEAN))
            if _first(sub, _VAR) is not None:
                v[s] = _value(_first(sub, _VAR))
    return m, v


def parse_gap_stats(data: Any) -> GapStats | None:
    """Per-layer mean/variance per input scale from any of the layouts a stats file may use.

    Accepted: ``{"layers": {name: {"x1": {"mean", "variance"}, ..., "score"}}, "chosen": [...]}``
    (what ``train-memrm`` writes), ``{"layers": [{"name", "mean": {"x1"...}, "var": {...}}]}``,
    or columns ``{"layers": [names], "mean": {"x1":
    [per layer]}, "var": {...}}``; the gap layers under ``gap_layers``/``chosen``/``selected``.
    Returns None when no per-layer statistics are found.
    """
    if not isinstance(data, Mapping):
        return None
    chosen = _first(data, _CHOSEN)
    chosen = [str(c) for c in chosen] if isinstance(chosen, list) else []
    body = _first(data, ("layers", "stats", "statistics"))
    names: list[str] = []
    mean: dict[str, list[float]] = {}
    var: dict[str, list[float]] = {}
    score: list[float] = []
    cols_mean, cols_var = _first(data, _MEAN), _first(data, _VAR)
    if isinstance(cols_mean, Mapping) and isinstance(cols_var, Mapping):
        for k, v in cols_mean.items():
            if (s := _scale_key(k)) and isinstance(v, list):
                mean[s] = [_value(x) for x in v]
        for k, v in cols_var.items():
            if (s := _scale_key(k)) and isinstance(v, list):
                var[s] = [_value(x) for x in v]
        n = max((len(v) for v in mean.values()), default=0)
        names = [str(x) for x in body] if isinstance(body, list) else [str(i) for i in range(n)]
    else:
        if isinstance(body, Mapping):
            records = [(str(k), r) for k, r in body.items() if isinstance(r, Mapping)]
        elif isinstance(body, list):
            records = [
                (str(r.get("name", r.get("layer", i))), r)
                for i, r in enumerate(body)
                if isinstance(r, Mapping)
            ]
        else:
            records = []
        for name, rec in records:
            m, v = _record_stats(rec)
            if not m:
                continue
            names.append(name)
            if isinstance(rec.get("score"), (int, float)):
                score.append(float(rec["score"]))
            for s in SCALES:
                mean.setdefault(s, []).append(m.get(s, float("nan")))
                var.setdefault(s, []).append(v.get(s, float("nan")))
            if rec.get("gap") is True or rec.get("selected") is True:
                chosen.append(name)
    if not names or not mean:
        return None
    return GapStats(names, mean, var, chosen, score if len(score) == len(names) else None)


def gap_figure(stats_dir: Path, path: Path) -> Path | None:
    """Fig. 1 from the first of :data:`GAP_FILES` in ``stats_dir`` (a warning when none)."""
    found = [stats_dir / n for n in GAP_FILES if (stats_dir / n).is_file()]
    if not found:
        where = stats_dir / GAP_FILES[0]
        warnings.warn(f"{where}: not found; gap-layer figure skipped", FigureWarning, 2)
        return None
    src = found[0]
    try:
        stats = parse_gap_stats(json.loads(src.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        warnings.warn(f"{src}: unreadable ({exc}); gap-layer figure skipped", FigureWarning, 2)
        return None
    if stats is None:
        warnings.warn(f"{src}: no per-layer statistics; figure skipped", FigureWarning, 2)
        return None
    panels = [("mean", stats.mean), ("variance", stats.var)]
    rows = len(panels) + (stats.score is not None)
    fig = _figure(max(6.0, 0.35 * len(stats.layers) + 2), 3 * rows)
    x = np.arange(len(stats.layers))
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    for ax, (what, values) in zip(axes, panels, strict=False):
        for s in SCALES:
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
    return _save(fig, path)


# -- patches ------------------------------------------------------------------------------------
def patch_grid(shown, classes: list[str], path: Path) -> Path | None:
    """Fig. 4: per patch, each branch's image, label and prediction, then the fusion."""
    from matplotlib.patches import Patch

    if not shown.names:
        return None
    nc = len(classes)
    cols: list[tuple[str, np.ndarray]] = []
    for b, y in zip(SCALES, ("y1", "y2", "y3"), strict=True):
        cols.append((b.upper(), shown.images[b]))
        cols.append((f"label {y.upper()}", colorize(shown.labels[y], nc)))
        if b in shown.preds:
            cols.append((f"pred {b.upper()}", colorize(shown.preds[b], nc)))
    if "fusion" in shown.preds:
        cols.append(("pred fusion", colorize(shown.preds["fusion"], nc)))
    k = len(shown.names)
    fig = _figure(1.6 * len(cols), 1.6 * k + 0.8)
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
    return _save(fig, path)


def write_figures(out_dir: str | Path, checkpoints: str | Path, shown=None) -> list[Path]:
    """Every figure the inputs allow; returns the files written (missing inputs: warnings)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = CheckpointDir(checkpoints)
    written: list[Path] = []
    for stage in STAGES:
        history = ck.stage(stage).read_history()
        if p := training_curves(stage, history, out / f"training_{stage}.png"):
            written.append(p)
    if p := gap_figure(ck.stage("memrm").dir, out / "gap_layers.png"):
        written.append(p)
    classes = ck.read_card().classes if shown is not None and ck.exists() else []
    if classes and (p := patch_grid(shown, classes, out / "patches.png")):
        written.append(p)
    return written

"""The paper's figures from a checkpoint directory and an evaluation (``evaluate --figures``).

* ``training_<stage>.png`` (Figs. 5 and 6): every numeric key of each stage's
  ``history.jsonl`` against the epoch; losses on the left, scores (mIoU, ...) on the right.
* ``gap_layers.png`` (Fig. 1): per-layer activation mean and variance of the frozen meta-branch
  for X1, X2 and X3 and the gap score, gap layers in red, from ``memrm/gap_layers.json`` as
  ``train-memrm`` writes it; skipped with a warning when it is missing or holds no per-layer
  statistics.
* ``patches.png`` (Fig. 4): test patches, their labels and each output's prediction.

This module reads the inputs and names the files; :mod:`msn_cli.plots` draws them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from msn_cli.io.checkpoints import GAP_FIGURE, STAGES, CheckpointDir
from msn_cli.plots import GapStats, gap_figure, parse_gap_stats, patch_grid, training_curves


class FigureWarning(UserWarning):
    """A figure that could not be drawn (missing input); the others are still written."""


def read_gap_stats(source: Path) -> GapStats | None:
    """:func:`parse_gap_stats` of ``source`` (``memrm/gap_layers.json``), or None with a
    :class:`FigureWarning` saying why."""
    if not source.is_file():
        warnings.warn(f"{source}: not found; gap-layer figure skipped", FigureWarning, 3)
        return None
    try:
        stats = parse_gap_stats(json.loads(source.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        warnings.warn(f"{source}: unreadable ({exc}); gap-layer figure skipped", FigureWarning, 3)
        return None
    if stats is None:
        warnings.warn(f"{source}: no per-layer statistics; figure skipped", FigureWarning, 3)
    return stats


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
    if stats := read_gap_stats(ck.stage("memrm").gap_stats):
        written.append(gap_figure(stats, out / GAP_FIGURE))
    classes = ck.read_card().classes if shown is not None and ck.exists() else []
    if classes and (p := patch_grid(shown, classes, out / "patches.png")):
        written.append(p)
    return written

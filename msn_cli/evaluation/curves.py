"""Convergence curves (the paper's Fig. 5 and 6): mIoU per epoch of several training runs.

A run is a stage folder of a checkpoint directory (``ckpt/memrm``) or its ``history.jsonl``
directly: one JSON object per epoch, ``epoch`` counted from 1 as the training loop writes it
(the line number where a record lacks it). For each run and each output name (``x1``, ``x2``,
``x3``, ``fusion``) the curve is ``val_miou_<name>``, or ``train_miou_<name>`` where no record
of that run has the validation key (the header then says ``(train)``). The result is a
:class:`~msn_cli.evaluation.compare.Comparison` (rows = epochs, one column per run and output),
so it prints and writes like the result tables; :func:`msn_cli.plots.plot_curves` draws it.
Runs given the same label (one training repeated with other seeds) share their columns: each
cell is the mean ± sample sd over the runs that recorded that epoch, and the plot draws the
mean.

Example:
    >>> hist = [{"epoch": 1, "val_miou_x1": 0.30}, {"epoch": 2, "val_miou_x1": 0.41}]
    >>> other = [{"epoch": 2, "train_miou_x1": 0.5}]
    >>> t = curve_table([("MSN", hist), ("U-Net", other)], ["x1"])
    >>> t.columns
    ['Epoch', 'MSN X1', 'U-Net X1 (train)']
    >>> t.cells()
    [['1', '30.0', '-'], ['2', '41.0', '50.0']]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.evaluation.compare import (
    STORE_FIELDS,
    Comparison,
    checked_names,
    merged,
    spread_or_none,
)
from msn_cli.io import checkpoints
from msn_cli.io.checkpoints import HISTORY
from msn_cli.vocab import OUTPUTS

DEFAULT_TITLE = "mIoU (%) per epoch"

History = list[dict[str, Any]]


def read_history(path: str | Path) -> History:
    """The records of a run: a stage folder's ``history.jsonl`` (or that file itself), read
    by :func:`msn_cli.io.checkpoints.read_history`; a run without epochs is an error."""
    path = Path(path)
    file = path / HISTORY if path.is_dir() else path
    if not file.is_file():
        raise MsnError(path, f"no {HISTORY} here; train this stage first")
    records = checkpoints.read_history(file)
    if not records:
        raise MsnError(file, "no epochs recorded yet; train this stage first")
    return records


def curve_names(names: Sequence[str]) -> list[str]:
    """``names`` checked against the outputs (a usage error names ``--curve``)."""
    return checked_names(names, OUTPUTS, "--curve")


def run_labels(paths: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    """``labels``, or each run's stage folder as given (the folder above a ``history.jsonl``).

    Runs given the same label (the same training with other seeds) share columns: their mean
    and sd per epoch. The same stage folder given twice is an error.
    """
    folders = [p.parent if p.name == HISTORY else p for p in map(Path, paths)]
    seen = [f.resolve() for f in folders]
    for i, f in enumerate(seen):
        if f in seen[:i]:
            raise MsnUsageError("RUNS", f"{folders[i]} given twice")
    if labels is None:
        return [str(f) for f in folders]
    if len(labels) != len(paths):
        raise MsnUsageError("--labels", f"{len(labels)} label(s) for {len(paths)} run(s)")
    return list(labels)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def curve_table(
    runs: Sequence[tuple[str, History]], names: Sequence[str], title: str | None = None
) -> Comparison:
    """Rows = epochs (union over the runs shown), one column per (run, output) in that order."""
    names = curve_names(names)
    series: dict[str, list[dict[int, float | None]]] = {}  # header -> one curve per run
    for label, history in runs:
        for name in names:
            key = f"val_miou_{name}"
            suffix = ""
            if not any(key in r for r in history):
                key, suffix = f"train_miou_{name}", " (train)"
                if not any(key in r for r in history):
                    continue
            header = f"{label} {STORE_FIELDS[name]}{suffix}"
            series.setdefault(header, []).append({r["epoch"]: _number(r.get(key)) for r in history})
    if not series:
        shown = ", ".join(label for label, _ in runs)
        raise MsnError(
            None,
            f"no val_miou_/train_miou_ of {', '.join(names)} in the history of {shown}",
        )
    epochs = sorted({e for group in series.values() for s in group for e in s})
    rows, spread = [], []
    for e in epochs:
        cells = [
            merged([v for s in group if (v := s.get(e)) is not None]) for group in series.values()
        ]
        rows.append([e, *[mean for mean, _ in cells]])
        spread.append([None, *[s for _, s in cells]])
    return Comparison(
        DEFAULT_TITLE if title is None else title,
        ["Epoch", *series],
        rows,
        ["count", *["percent"] * len(series)],
        spread_or_none(spread),
    )


def curves(
    paths: Sequence[Path],
    names: Sequence[str],
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Comparison:
    """:func:`curve_table` of the histories of ``paths`` (stage folders or history files)."""
    if not paths:
        raise MsnUsageError("--compare", "give the stage folders whose curves to compare")
    names = curve_names(names)
    shown = run_labels(paths, labels)
    return curve_table(
        [(s, read_history(p)) for s, p in zip(shown, paths, strict=True)], names, title
    )

"""Convergence curves (the paper's Fig. 5 and 6): mIoU per epoch of several training runs.

A run is a stage folder of a checkpoint directory (``ckpt/memrm``) or its ``history.jsonl``
directly: one JSON object per epoch, ``epoch`` counted from 1 as the training loop writes it
(the line number where a record lacks it). For each run and each output name (``x1``, ``x2``,
``x3``, ``fusion``) the curve is ``val_miou_<name>``, or ``train_miou_<name>`` where no record
of that run has the validation key (the header then says ``(train)``). The result is a
:class:`~msn_cli.evaluation.compare.Comparison` (rows = epochs, one column per run and output),
so it prints and writes like the result tables; :func:`msn_cli.plots.plot_curves` draws it.

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
from msn_cli.evaluation.compare import STORE_FIELDS, Comparison, checked_names
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
    """``labels``, or each run's stage folder as given (the folder above a ``history.jsonl``)."""
    if labels is not None:
        if len(labels) != len(paths):
            raise MsnUsageError("--labels", f"{len(labels)} label(s) for {len(paths)} run(s)")
        names, option = list(labels), "--labels"
    else:
        names = [str(p.parent if p.name == HISTORY else p) for p in map(Path, paths)]
        option = "RUNS"
    for i, name in enumerate(names):
        if name in names[:i]:
            raise MsnUsageError(option, f"{name!r} names two runs; give each its own label")
    return names


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def curve_table(
    runs: Sequence[tuple[str, History]], names: Sequence[str], title: str | None = None
) -> Comparison:
    """Rows = epochs (union over the runs shown), one column per (run, output) in that order."""
    names = curve_names(names)
    headers: list[str] = []
    series: list[dict[int, float | None]] = []
    for label, history in runs:
        for name in names:
            key = f"val_miou_{name}"
            suffix = ""
            if not any(key in r for r in history):
                key, suffix = f"train_miou_{name}", " (train)"
                if not any(key in r for r in history):
                    continue
            headers.append(f"{label} {STORE_FIELDS[name]}{suffix}")
            series.append({r["epoch"]: _number(r.get(key)) for r in history})
    if not series:
        shown = ", ".join(label for label, _ in runs)
        raise MsnError(
            None,
            f"no val_miou_/train_miou_ of {', '.join(names)} in the history of {shown}",
        )
    epochs = sorted({e for s in series for e in s})
    return Comparison(
        DEFAULT_TITLE if title is None else title,
        ["Epoch", *headers],
        [[e, *[s.get(e) for s in series]] for e in epochs],
        ["count", *["percent"] * len(series)],
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

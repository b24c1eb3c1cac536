"""Runs side by side, one row per run, laid out like the paper's tables.

Store results give Table 1's columns ``Method, # Parm (M), X1, X2, X3, Fusion`` (mIoU in
percent); ``columns`` picks others among :data:`STORE_FIELDS` (``fusion-params``: the fusion's
parameters, ``# F (M)``, for Table 5). Runs with the same row label are merged into one row at
the first one's place: each mIoU column takes the run that has it (two different numbers are an
error), the parameter columns the largest; three single-resolution runs labelled ``BiSeNet``
make Table 1's BiSeNet row. Slide results give ``Method, Slides, mIoU`` and the pooled IoU of
each class. Missing values are ``-`` in tables and markdown, empty in CSV.

Example:
    >>> r = {"kind": "store", "method": "MSN", "params_m": 15.62,
    ...      "miou": {"x1": 0.464, "x2": 0.472, "x3": 0.425, "fusion": None}}
    >>> t = comparison([r])
    >>> t.columns
    ['Method', '# Parm (M)', 'X1', 'X2', 'X3', 'Fusion']
    >>> t.cells()[0]
    ['MSN', '15.6', '46.4', '47.2', '42.5', '-']
    >>> x1 = {"kind": "store", "method": "BiSeNet", "params_m": 12.8, "miou": {"x1": 0.40}}
    >>> x3 = {"kind": "store", "method": "BiSeNet", "params_m": 12.8, "miou": {"x3": 0.43}}
    >>> comparison([x1, r, x3], columns=["x1", "x3", "fusion-params"]).cells()
    [['BiSeNet', '40.0', '43.0', '-'], ['MSN', '46.4', '42.5', '-']]
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.atomic import atomic_write_text
from msn_cli.vocab import OUTPUTS

#: ``--columns`` names and their headers, in the paper's order.
STORE_FIELDS = {
    "params": "# Parm (M)",
    "fusion-params": "# F (M)",
    "x1": "X1",
    "x2": "X2",
    "x3": "X3",
    "fusion": "Fusion",
}
DEFAULT_COLUMNS = ("params", *OUTPUTS)
#: Parameter columns and their result keys (millions; ``fusion_params_m`` is newer: absent = null).
_PARAM_KEYS = {"params": "params_m", "fusion-params": "fusion_params_m"}


@dataclass
class Comparison:
    """Column names and rows of numbers (None = missing); column 0 is the method label."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    #: per column: "text", "count", "params" or "percent" (how to format it)
    kinds: list[str]

    def cells(self, missing: str = "-") -> list[list[str]]:
        return [
            [_fmt(v, k, missing) for v, k in zip(r, self.kinds, strict=True)] for r in self.rows
        ]

    def to_markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n"
        align = "|" + "|".join(":---" if k == "text" else "---:" for k in self.kinds) + "|\n"
        body = "".join("| " + " | ".join(c) + " |\n" for c in self.cells())
        return f"{self.title}\n\n{head}{align}{body}"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv(v, k) for v, k in zip(row, self.kinds, strict=True)])
        return buf.getvalue()


def _fmt(v: Any, kind: str, missing: str) -> str:
    if v is None:
        return missing
    if kind == "text":
        return str(v)
    if kind == "params":
        return f"{v:.1f}" if v >= 1 else f"{v:.2g}"
    if kind == "count":
        return str(int(v))
    return f"{100 * v:.1f}"


def _csv(v: Any, kind: str) -> str:
    if v is None:
        return ""
    if kind == "percent":
        return f"{100 * v:.2f}"
    if kind == "params":
        return f"{v:.6g}"
    return str(v)


def comparison(
    results: Sequence[dict[str, Any]],
    labels: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> Comparison:
    """One table of ``results`` (all store or all slide results); ``labels`` rename rows.

    ``columns`` (store results only; default :data:`DEFAULT_COLUMNS`) picks the columns after
    the method; ``title`` replaces the default title line.
    """
    if not results:
        raise MsnUsageError("--compare", "give at least one result file")
    if labels is not None and len(labels) != len(results):
        raise MsnUsageError("--labels", f"{len(labels)} label(s) for {len(results)} run(s)")
    kinds = {r.get("kind") for r in results}
    if len(kinds) != 1:
        raise MsnUsageError("--compare", "cannot mix store and slide results in one table")
    names = (
        list(labels)
        if labels
        else [str(r.get("method") or f"run {i + 1}") for i, r in enumerate(results)]
    )
    if kinds == {"store"}:
        fields = store_columns(DEFAULT_COLUMNS if columns is None else columns)
        groups: dict[str, list[dict[str, Any]]] = {}
        for name, r in zip(names, results, strict=True):
            groups.setdefault(name, []).append(r)
        splits = sorted({str(r.get("split")) for r in results})
        return Comparison(
            f"mIoU (%) on split {', '.join(splits)}" if title is None else title,
            ["Method", *[STORE_FIELDS[f] for f in fields]],
            [_merged_row(name, runs, fields) for name, runs in groups.items()],
            ["text", *["params" if f in _PARAM_KEYS else "percent" for f in fields]],
        )
    if columns is not None:
        raise MsnUsageError("--columns", "only for store results (slide tables are fixed)")
    if labels and len(set(labels)) != len(labels):
        twice = next(x for x in labels if list(labels).count(x) > 1)
        raise MsnUsageError(
            "--labels", f"{twice!r} given twice; slide results are not merged into one row"
        )
    classes = list(results[0].get("classes") or [])
    for r in results[1:]:
        if list(r.get("classes") or []) != classes:
            raise MsnError(None, "slide results with different class lists cannot share a table")
    rows = []
    for name, r in zip(names, results, strict=True):
        pooled = r["pooled"]
        iou = list(pooled.get("iou") or [None] * len(classes))
        rows.append([name, r.get("n_slides"), pooled.get("miou"), *iou])
    return Comparison(
        "pooled IoU (%) over whole slides" if title is None else title,
        ["Method", "Slides", "mIoU", *classes],
        rows,
        ["text", "count", "percent", *["percent"] * len(classes)],
    )


def checked_names(names: Sequence[str], allowed: Sequence[str], option: str) -> list[str]:
    """``names``: at least one, each in ``allowed``, none twice (else a usage error)."""
    out = list(names)
    if not out:
        raise MsnUsageError(option, f"give at least one of {', '.join(allowed)}")
    for i, name in enumerate(out):
        if name not in allowed:
            raise MsnUsageError(option, f"{name!r} is not one of {', '.join(allowed)}")
        if name in out[:i]:
            raise MsnUsageError(option, f"{name!r} given twice")
    return out


def store_columns(columns: Sequence[str]) -> list[str]:
    """``columns`` checked against :data:`STORE_FIELDS` (a usage error names ``--columns``)."""
    return checked_names(columns, STORE_FIELDS, "--columns")


def _value(result: dict[str, Any], label: str, field: str) -> float | None:
    if field in _PARAM_KEYS:
        key = _PARAM_KEYS[field]
        v = result.get(key)
    else:
        key = f"miou.{field}"
        v = (result.get("miou") or {}).get(field)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise MsnError(None, f"run {label!r}: {key} is {v!r}, not a number")
    return v


def _merged_row(label: str, runs: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[Any]:
    """One row of every run labelled ``label``: the largest parameter counts, the one mIoU."""
    row: list[Any] = [label]
    for f in fields:
        values = [v for r in runs if (v := _value(r, label, f)) is not None]
        if f in _PARAM_KEYS:
            row.append(max(values, default=None))
            continue
        distinct = list(dict.fromkeys(values))
        if len(distinct) > 1:
            shown = " vs ".join(f"{100 * v:.2f}" for v in distinct)
            raise MsnError(
                None,
                f"runs labelled {label!r} disagree on {STORE_FIELDS[f]} ({shown}); "
                "give them different --labels",
            )
        row.append(distinct[0] if distinct else None)
    return row


def write_tables(table: Comparison, csv_path: Path | None, markdown_path: Path | None) -> None:
    if csv_path is not None:
        atomic_write_text(csv_path, table.to_csv())
    if markdown_path is not None:
        atomic_write_text(markdown_path, table.to_markdown())

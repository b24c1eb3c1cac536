"""Runs side by side, one row per run, laid out like the paper's tables.

Store results give Table 1's columns ``Method, # Parm (M), X1, X2, X3, Fusion`` (mIoU in
percent); slide results give ``Method, Slides, mIoU`` and the pooled IoU of each class. Missing
values are ``-`` in tables and markdown, empty in CSV.

Example:
    >>> r = {"kind": "store", "method": "MSN", "params_m": 15.62,
    ...      "miou": {"x1": 0.464, "x2": 0.472, "x3": 0.425, "fusion": None}}
    >>> t = comparison([r])
    >>> t.columns
    ['Method', '# Parm (M)', 'X1', 'X2', 'X3', 'Fusion']
    >>> t.cells()[0]
    ['MSN', '15.6', '46.4', '47.2', '42.5', '-']
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.evaluation import OUTPUTS
from msn_cli.io.atomic import atomic_write_text

STORE_COLUMNS = ["Method", "# Parm (M)", "X1", "X2", "X3", "Fusion"]


@dataclass
class Comparison:
    """Column names and rows of numbers (None = missing); column 0 is the method label."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    #: per column: "text", "params" or "percent" (how to format it)
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
    results: Sequence[dict[str, Any]], labels: Sequence[str] | None = None
) -> Comparison:
    """One table of ``results`` (all store or all slide results); ``labels`` rename rows."""
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
        rows = [
            [name, r.get("params_m"), *[(r.get("miou") or {}).get(o) for o in OUTPUTS]]
            for name, r in zip(names, results, strict=True)
        ]
        splits = sorted({str(r.get("split")) for r in results})
        return Comparison(
            f"mIoU (%) on split {', '.join(splits)}",
            list(STORE_COLUMNS),
            rows,
            ["text", "params", "percent", "percent", "percent", "percent"],
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
        "pooled IoU (%) over whole slides",
        ["Method", "Slides", "mIoU", *classes],
        rows,
        ["text", "count", "percent", *["percent"] * len(classes)],
    )


def write_tables(table: Comparison, csv_path: Path | None, markdown_path: Path | None) -> None:
    if csv_path is not None:
        atomic_write_text(csv_path, table.to_csv())
    if markdown_path is not None:
        atomic_write_text(markdown_path, table.to_markdown())

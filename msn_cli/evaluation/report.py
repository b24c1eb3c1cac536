"""Rich tables of ``msn evaluate`` (printing only; the numbers come from the stage)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from msn_cli.evaluation import OUTPUTS, TARGETS
from msn_cli.evaluation.compare import Comparison


def _console() -> Console:
    return Console(soft_wrap=True)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def print_comparison(table: Comparison) -> None:
    t = Table(title=table.title)
    for col, kind in zip(table.columns, table.kinds, strict=True):
        t.add_column(col, justify="left" if kind == "text" else "right")
    for row in table.cells():
        t.add_row(*row)
    _console().print(t)


def print_store_details(result: dict[str, Any]) -> None:
    """Per-class IoU of every output and each output's confusion matrix."""
    con = _console()
    classes = result["classes"]
    outs = [o for o in OUTPUTS if result["iou"].get(o) is not None]
    t = Table(title=f"IoU (%) per class, {result['n_patches']} patches of '{result['split']}'")
    t.add_column("class")
    for o in outs:
        t.add_column(f"{o.upper()} vs {TARGETS[o].upper()}", justify="right")
    for i, name in enumerate(classes):
        t.add_row(name, *[_pct(result["iou"][o][i]) for o in outs])
    con.print(t)
    for o in outs:
        print_confusion(result["confusion"][o], classes, f"confusion {o.upper()} (rows: truth)")


def print_confusion(matrix: list[list[int]], classes: list[str], title: str) -> None:
    t = Table(title=title)
    t.add_column("truth \\ pred")
    for name in classes:
        t.add_column(name, justify="right")
    for name, row in zip(classes, matrix, strict=True):
        t.add_row(name, *[str(v) for v in row])
    _console().print(t)


def print_slides(result: dict[str, Any]) -> None:
    classes = result["classes"]
    t = Table(title="IoU (%) over whole slides")
    for col in ("slide", "mIoU", *classes, "pixels", "unpredicted"):
        t.add_column(col, justify="left" if col == "slide" else "right")
    entries = [(s["name"], s) for s in result["slides"]] + [("pooled", result["pooled"])]
    for name, s in entries:
        t.add_row(
            name,
            _pct(s["miou"]),
            *[_pct(v) for v in s["iou"]],
            str(s["pixels"]),
            str(s["unpredicted_pixels"]),
        )
    _console().print(t)
    print_confusion(result["pooled"]["confusion"], classes, "pooled confusion (rows: truth)")

"""Stage ``evaluate``: score (store mode, slide mode) or compare, and write what was asked.

:mod:`msn_cli.evaluation` computes (mIoU, JSON layouts, comparison tables, curves, figures);
each function here runs one mode of ``msn evaluate`` on it and writes the outputs the command
asked for (``--json``, ``--csv``, ``--markdown``, ``--plot``, ``--figures``). Every function
returns data; printing is the command's job.

Example:
    >>> result, figures = evaluate_store("store.zarr", "ckpt", split="test")  # doctest: +SKIP
    >>> result["miou"]["fusion"]  # doctest: +SKIP
    0.476
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msn_cli.evaluation.compare import Comparison, comparison, versus_rows, write_tables
from msn_cli.evaluation.results import read_result, write_json
from msn_cli.evaluation.slides import SlidePair, evaluate_slides
from msn_cli.vocab import IGNORE

__all__ = [
    "compare_curves",
    "compare_results",
    "evaluate_slide_pairs",
    "evaluate_store",
    "single_table",
]


def evaluate_store(
    store: str,
    checkpoints: str,
    split: str = "test",
    batch_size: int = 16,
    device: str = "auto",
    method: str | None = None,
    json_path: Path | None = None,
    figures: Path | None = None,
    figure_patches: int = 6,
    workers: int = 0,
    outputs: Sequence[str] | None = None,
    weights: str = "best",
) -> tuple[dict[str, Any], list[Path]]:
    """Score the checkpoint's outputs on ``split``; optionally write the JSON and figures.

    ``workers``: DataLoader processes reading the store (0 reads in this process).
    ``weights``: ``best`` or ``last`` (the top stage's best.pt or weights.pt; see
    :mod:`msn_cli.io.checkpoints`); the result records it and each stage's file.
    """
    from msn_cli.evaluation.store import evaluate_store as run

    result, shown = run(
        store,
        checkpoints,
        split=split,
        batch_size=batch_size,
        device=device,
        method=method,
        show=figure_patches if figures is not None else 0,
        workers=workers,
        outputs=outputs,
        weights=weights,
    )
    if json_path is not None:
        write_json(json_path, result)
    written: list[Path] = []
    if figures is not None:
        from msn_cli.evaluation.figures import write_figures

        written = write_figures(figures, checkpoints, shown)
    return result, written


def evaluate_slide_pairs(
    pairs: Sequence[SlidePair],
    classes: Sequence[str],
    unannotated: str = "normal",
    mask_values: str | None = None,
    method: str | None = None,
    json_path: Path | None = None,
) -> dict[str, Any]:
    """Per-slide and pooled IoU of predicted masks against annotations or label masks.

    ``unannotated``: ``normal`` (pixels no polygon covers are class 0, like ``msn tile``) or
    ``ignore`` (255, not scored).
    """
    background = {"normal": 0, "ignore": IGNORE}[unannotated]
    result = evaluate_slides(pairs, classes, background, mask_values, method)
    if json_path is not None:
        write_json(json_path, result)
    return result


def compare_results(
    paths: Sequence[Path],
    labels: Sequence[str] | None = None,
    csv_path: Path | None = None,
    markdown_path: Path | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    json_path: Path | None = None,
    versus: str | None = None,
) -> Comparison:
    """One table of several ``--json`` results (rows = runs), optionally as CSV, markdown
    and JSON (:meth:`Comparison.to_json`: every mIoU cell as mean, sd and runs).

    Runs with the same label share a row; ``columns`` (store results) picks the columns among
    ``params, fusion-params, x1, x2, x3, fusion, x2y1, x3y1``; ``title`` replaces the title.
    ``versus`` (``A,B``, to be compared with :func:`~msn_cli.evaluation.compare.versus`) must
    name two rows: checked before anything is written.
    """
    table = comparison([read_result(p) for p in paths], labels, columns, title)
    if versus is not None:
        versus_rows(table, versus)
    write_tables(table, csv_path, markdown_path, json_path)
    return table


def compare_curves(
    paths: Sequence[Path],
    names: Sequence[str],
    labels: Sequence[str] | None = None,
    csv_path: Path | None = None,
    markdown_path: Path | None = None,
    plot_path: Path | None = None,
    title: str | None = None,
    json_path: Path | None = None,
) -> Comparison:
    """mIoU per epoch of the outputs ``names`` of training runs (stage folders or histories).

    Rows = epochs, one column per run and output (validation mIoU, else training mIoU);
    optionally written as CSV, markdown, JSON and a line plot (PNG).
    """
    from msn_cli.evaluation.curves import curves
    from msn_cli.plots import plot_curves

    table = curves(paths, names, labels, title)
    write_tables(table, csv_path, markdown_path, json_path)
    if plot_path is not None:
        plot_curves(table, plot_path)
    return table


def single_table(
    result: dict[str, Any], csv_path: Path | None = None, markdown_path: Path | None = None
) -> Comparison:
    """The one-row table of a fresh result (Table 1's row), optionally as CSV/markdown."""
    table = comparison([result])
    write_tables(table, csv_path, markdown_path)
    return table

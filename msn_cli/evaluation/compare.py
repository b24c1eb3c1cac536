"""Runs side by side, one row per run, laid out like the paper's tables.

Store results give Table 1's columns ``Method, # Parm (M), X1, X2, X3, Fusion`` (mIoU in
percent); ``columns`` picks others among :data:`STORE_FIELDS` (``fusion-params``: the fusion's
parameters, ``# F (M)``, for Table 5; ``x2y1``, ``x3y1``: S2′ and S3′, X2's and X3's maps
cropped to X1's field of view and upsampled, scored against Y1 like the fusion). Runs with the
same row label are merged into one row at the first one's place: each mIoU column takes the
runs that have it, the parameter columns the largest; three single-resolution runs labelled
``BiSeNet`` make Table 1's BiSeNet row. Several runs with a value in the same cell (the same
row trained with other seeds) give the mean and the sample standard deviation (n - 1): the
cell reads ``mean ± sd``, a note under the table gives the number of runs, and a cell with
fewer runs than the others shows its own ``(n=k)``. A table with one run per cell prints as it
always did. CSV adds ``<column> sd`` and ``<column> n`` after each mIoU column (only when some
cell has several runs); :meth:`Comparison.to_json` (``evaluate --compare --json``) always
carries mean, sd and n. :func:`versus` (``--versus A,B``, rows picked by :func:`versus_rows`)
says, per column, whether two rows are more than one sd apart. Slide results
give ``Method, Slides, mIoU`` and the pooled IoU of each class. Missing values are ``-`` in
tables and markdown, empty in CSV.

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
    >>> s0 = {"kind": "store", "method": "MSN", "miou": {"x1": 0.464, "fusion": 0.476}}
    >>> s1 = {"kind": "store", "method": "MSN", "miou": {"x1": 0.484, "fusion": 0.470}}
    >>> t = comparison([s0, s1], columns=["x1", "fusion"])
    >>> t.cells(), t.note
    ([['MSN', '47.4 ± 1.4', '47.3 ± 0.4']], 'mean ± sd over 2 runs')
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.atomic import atomic_write_text
from msn_cli.vocab import ALIGNED, OUTPUTS

#: ``--columns`` names and their headers, in the paper's order.
STORE_FIELDS = {
    "params": "# Parm (M)",
    "fusion-params": "# F (M)",
    "x1": "X1",
    "x2": "X2",
    "x3": "X3",
    "fusion": "Fusion",
    "x2y1": "S2′ vs Y1",
    "x3y1": "S3′ vs Y1",
}
DEFAULT_COLUMNS = ("params", *OUTPUTS)
#: Parameter columns and their result keys (millions; ``fusion_params_m`` is newer: absent = null).
_PARAM_KEYS = {"params": "params_m", "fusion-params": "fusion_params_m"}
#: mIoU columns whose key in the result's ``miou`` is not the column's name: S2′ = up(crop(S2))
#: and S3′ scored against Y1 (results written before these existed have no such key: null).
ALIGNED_KEYS = {"x2y1": ALIGNED["x2"], "x3y1": ALIGNED["x3"]}


@dataclass(frozen=True)
class Spread:
    """How a merged cell's runs spread: the sample standard deviation (n - 1; None for one
    run) of its ``n`` values. The row holds their mean."""

    sd: float | None
    n: int


@dataclass
class Comparison:
    """Column names and rows of numbers (None = missing); column 0 is the method label.

    ``spread`` (None unless some cell merges several runs) holds, for every mIoU cell with a
    value, its :class:`Spread`; the row then holds the mean.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    #: per column: "text", "count", "params" or "percent" (how to format it)
    kinds: list[str]
    spread: list[list[Spread | None]] | None = None

    @property
    def runs(self) -> int:
        """The most runs any cell merges (1 without ``spread``)."""
        return max((s.n for r in self.spread or [] for s in r if s is not None), default=1)

    @property
    def note(self) -> str | None:
        """The line under a table whose cells merge several runs (None otherwise)."""
        if self.spread is None:
            return None
        fewer = any(s is not None and s.n < self.runs for r in self.spread for s in r)
        return f"mean ± sd over {self.runs} runs" + ("; (n=k): over k runs" if fewer else "")

    def _spreads(self) -> list[list[Spread | None]]:
        return self.spread or [[None] * len(r) for r in self.rows]

    def cells(self, missing: str = "-") -> list[list[str]]:
        n = self.runs
        return [
            [_fmt(v, k, missing, s, n) for v, k, s in zip(r, self.kinds, sp, strict=True)]
            for r, sp in zip(self.rows, self._spreads(), strict=True)
        ]

    def to_markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n"
        align = "|" + "|".join(":---" if k == "text" else "---:" for k in self.kinds) + "|\n"
        body = "".join("| " + " | ".join(c) + " |\n" for c in self.cells())
        note = f"\n{self.note}\n" if self.note else ""
        return f"{self.title}\n\n{head}{align}{body}{note}"

    def to_csv(self) -> str:
        """Numbers in percent; with ``spread``, ``<column> sd`` and ``<column> n`` follow
        each mIoU column."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        wide = self.spread is not None
        header: list[str] = []
        for c, k in zip(self.columns, self.kinds, strict=True):
            header += [c, f"{c} sd", f"{c} n"] if wide and k == "percent" else [c]
        writer.writerow(header)
        for row, sp in zip(self.rows, self._spreads(), strict=True):
            line: list[str] = []
            for v, k, s in zip(row, self.kinds, sp, strict=True):
                line.append(_csv(v, k))
                if wide and k == "percent":
                    sd = None if s is None else s.sd
                    line += [_csv(sd, k), "" if v is None else str(1 if s is None else s.n)]
            writer.writerow(line)
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        """``{"title", "columns", "rows": [{column: value}]}``: text and counts as they are,
        every mIoU cell as ``{"mean", "sd", "n"}`` (fractions, sd null for one run; null when
        missing), as ``--json`` writes it."""
        rows = []
        for row, sp in zip(self.rows, self._spreads(), strict=True):
            out: dict[str, Any] = {}
            for c, v, k, s in zip(self.columns, row, self.kinds, sp, strict=True):
                if k == "percent" and v is not None:
                    v = {"mean": v, "sd": None if s is None else s.sd, "n": 1 if s is None else s.n}
                out[c] = v
            rows.append(out)
        return {"title": self.title, "columns": list(self.columns), "rows": rows}

    def cell(self, row: str, column: str) -> tuple[float | None, Spread | None]:
        """The value and spread of the cell in the row labelled ``row`` under ``column``
        (a header such as ``X1``)."""
        labels = [str(r[0]) for r in self.rows]
        if row not in labels:
            raise MsnUsageError("--versus", f"no row {row!r} (rows: {', '.join(labels)})")
        if column not in self.columns[1:]:
            raise MsnUsageError("--versus", f"no column {column!r}")
        i, j = labels.index(row), self.columns.index(column)
        return self.rows[i][j], self._spreads()[i][j]


def _fmt(v: Any, kind: str, missing: str, spread: Spread | None = None, runs: int = 1) -> str:
    if v is None:
        return missing
    if kind == "text":
        return str(v)
    if kind == "params":
        return f"{v:.1f}" if v >= 1 else f"{v:.2g}"
    if kind == "count":
        return str(int(v))
    text = f"{100 * v:.1f}"
    if spread is not None and spread.sd is not None:
        text += f" ± {100 * spread.sd:.1f}"
    if runs > 1 and (1 if spread is None else spread.n) < runs:
        text += f" (n={1 if spread is None else spread.n})"
    return text


def merged(values: Sequence[float]) -> tuple[float | None, Spread | None]:
    """The mean of ``values`` and their :class:`Spread` (None, None when there are none).

    Example:
        >>> mean, spread = merged([0.40, 0.42, 0.47])
        >>> round(mean, 6), round(spread.sd, 6), spread.n  # sd = sqrt(0.0026 / 2)
        (0.43, 0.036056, 3)
        >>> merged([0.5])
        (0.5, Spread(sd=None, n=1))
    """
    if not values:
        return None, None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), Spread(sd, len(values))


def spread_or_none(spread: list[list[Spread | None]]) -> list[list[Spread | None]] | None:
    """``spread`` if some cell merges several runs, else None (a table prints as before)."""
    return spread if any(s is not None and s.n > 1 for r in spread for s in r) else None


def separated(
    a: tuple[float | None, Spread | None], b: tuple[float | None, Spread | None]
) -> bool | None:
    """Whether two cells (mean, spread) differ by more than one sd: the larger of their two
    sample sds. None when either is missing or has a single run (no sd to judge by).

    Example:
        >>> separated((0.80, Spread(0.01, 3)), (0.75, Spread(0.02, 3)))
        True
        >>> separated((0.80, Spread(0.04, 3)), (0.77, Spread(0.02, 3)))
        False
    """
    (ma, sa), (mb, sb) = a, b
    if ma is None or mb is None or sa is None or sb is None or sa.sd is None or sb.sd is None:
        return None
    return abs(ma - mb) > max(sa.sd, sb.sd)


def versus(table: Comparison, a: str, b: str, columns: Sequence[str] | None = None) -> list[str]:
    """One line per mIoU column (or per header in ``columns``): row ``a`` against row ``b``,
    their cells, the difference and ``separated`` (more than one sd apart), ``not separated``
    (within one sd) or ``one run`` (no sd).

    Example:
        >>> t = Comparison("T", ["Method", "X1"], [["A", 0.80], ["B", 0.75]], ["text", "percent"],
        ...                [[None, Spread(0.01, 3)], [None, Spread(0.02, 3)]])
        >>> versus(t, "A", "B")
        ['X1: A 80.0 ± 1.0 vs B 75.0 ± 2.0: +5.0, separated (sd 2.0)']
    """
    heads = [
        c for c, k in zip(table.columns, table.kinds, strict=True) if k == "percent"
    ] if columns is None else list(columns)  # fmt: skip
    lines = []
    for head in heads:
        ca, cb = table.cell(a, head), table.cell(b, head)
        shown = [_fmt(v, "percent", "-", s) for v, s in (ca, cb)]
        line = f"{head}: {a} {shown[0]} vs {b} {shown[1]}"
        if ca[0] is None or cb[0] is None:
            lines.append(f"{line}: missing")
            continue
        verdict = separated(ca, cb)
        diff = f"{100 * (ca[0] - cb[0]):+.1f}"
        if verdict is None:
            lines.append(f"{line}: {diff}, one run (no sd)")
        else:
            sd = max(s.sd for _, s in (ca, cb))  # type: ignore[union-attr]
            word = "separated" if verdict else "not separated"
            lines.append(f"{line}: {diff}, {word} (sd {100 * sd:.1f})")
    return lines


def versus_rows(table: Comparison, text: str) -> tuple[str, str]:
    """The two row labels ``A,B`` of ``--versus`` in ``table``: split at the one comma that
    leaves a row label on each side (method names such as ``MSN (bisenet, w/o Meta)`` hold
    commas themselves); a usage error naming the rows otherwise.

    Example:
        >>> t = Comparison("T", ["Method", "X1"], [["MSN (b, conv)", 0.5], ["U-Net", 0.4]],
        ...                ["text", "percent"])
        >>> versus_rows(t, "U-Net,MSN (b, conv)")
        ('U-Net', 'MSN (b, conv)')
    """
    labels = [str(r[0]) for r in table.rows]
    parts = text.split(",")
    pairs = {
        (a, b)
        for i in range(1, len(parts))
        if (a := ",".join(parts[:i]).strip()) in labels
        and (b := ",".join(parts[i:]).strip()) in labels
    }
    rows = f"(rows: {', '.join(labels)})"
    if len(pairs) != 1:
        problem = "is two row labels in more than one way" if pairs else "is not two row labels A,B"
        raise MsnUsageError("--versus", f"{text!r} {problem} {rows}")
    ((a, b),) = pairs
    if a == b:
        raise MsnUsageError("--versus", f"{text!r}: give two different rows {rows}")
    return a, b


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
        merged_rows = [_merged_row(name, runs, fields) for name, runs in groups.items()]
        return Comparison(
            f"mIoU (%) on split {', '.join(splits)}" if title is None else title,
            ["Method", *[STORE_FIELDS[f] for f in fields]],
            [row for row, _ in merged_rows],
            ["text", *["params" if f in _PARAM_KEYS else "percent" for f in fields]],
            spread_or_none([spread for _, spread in merged_rows]),
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
        name = ALIGNED_KEYS.get(field, field)
        key = f"miou.{name}"
        v = (result.get("miou") or {}).get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise MsnError(None, f"run {label!r}: {key} is {v!r}, not a number")
    return v


def _merged_row(
    label: str, runs: Sequence[dict[str, Any]], fields: Sequence[str]
) -> tuple[list[Any], list[Spread | None]]:
    """One row of every run labelled ``label`` and its spreads: the largest parameter counts,
    the mean of each mIoU over the runs that have it."""
    row: list[Any] = [label]
    spread: list[Spread | None] = [None]
    for f in fields:
        values = [v for r in runs if (v := _value(r, label, f)) is not None]
        if f in _PARAM_KEYS:
            row.append(max(values, default=None))
            spread.append(None)
            continue
        mean, s = merged(values)
        row.append(mean)
        spread.append(s)
    return row, spread


def write_tables(
    table: Comparison,
    csv_path: Path | None,
    markdown_path: Path | None,
    json_path: Path | None = None,
) -> None:
    if csv_path is not None:
        atomic_write_text(csv_path, table.to_csv())
    if markdown_path is not None:
        atomic_write_text(markdown_path, table.to_markdown())
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(table.to_json(), indent=2) + "\n")

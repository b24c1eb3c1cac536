"""Manifests: CSV files listing many slides, with header ``slide,annotations,split``.

Relative paths resolve against the CSV's folder; ``annotations`` and ``split`` may be empty
(then the annotations are found beside the slide and the split comes from ``--split``).

Example ``manifest.csv``::

    slide,annotations,split
    slides/A01.svs,slides/A01.xml,train
    slides/A02.svs,,test
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msn_cli.errors import MsnError


@dataclass(frozen=True)
class ManifestRow:
    slide: Path
    annotations: Path | None
    split: str | None


def read_rows(
    path: str | os.PathLike[str], required: Sequence[str], header_hint: str, what: str = "rows"
) -> list[tuple[int, dict[str, str]]]:
    """(line number, stripped row) of a CSV with the ``required`` columns, all non-empty.

    The one CSV reader of msn (tile's and predict's manifests, evaluate's pairs).
    """
    path = Path(path)
    if not path.is_file():
        raise MsnError(path, "no such manifest")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise MsnError(
                    path, f"missing column(s) {', '.join(missing)}; header must be {header_hint}"
                )
            rows = []
            for i, raw in enumerate(reader, start=2):
                extra = [v for v in raw.pop(None, None) or [] if (v or "").strip()]
                if extra:  # (empty extra fields, e.g. a trailing comma, are harmless)
                    raise MsnError(
                        path, f"line {i}: {len(extra)} more field(s) than the header {header_hint}"
                    )
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                empty = [c for c in required if not row.get(c)]
                if empty:
                    raise MsnError(path, f"line {i}: empty {' and '.join(empty)}")
                rows.append((i, row))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise MsnError(path, f"cannot read manifest: {exc}") from exc
    if not rows:
        raise MsnError(path, f"manifest lists no {what}")
    return rows


def resolve(manifest: str | os.PathLike[str], value: str) -> Path:
    """A manifest's path ``value``, relative ones resolved against the manifest's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(manifest).parent / p)


def read_manifest(path: str | Path, required: tuple[str, ...] = ("slide",)) -> list[ManifestRow]:
    """Rows of a manifest CSV; paths resolved against its folder."""
    rows = read_rows(path, required, "slide,annotations,split", "slides")
    out, first = [], {}
    for line, row in rows:
        slide = resolve(path, row["slide"])
        key = os.path.normcase(os.path.abspath(slide))
        if key in first:
            raise MsnError(
                path, f"line {line}: {row['slide']} is listed again (first on line {first[key]})"
            )
        first[key] = line
        labels = resolve(path, row["annotations"]) if row.get("annotations") else None
        out.append(ManifestRow(slide, labels, row.get("split") or None))
    return out

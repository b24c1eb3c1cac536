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
from dataclasses import dataclass
from pathlib import Path

from msn_cli.errors import MsnError


@dataclass(frozen=True)
class ManifestRow:
    slide: Path
    annotations: Path | None
    split: str | None


def read_manifest(path: str | Path, required: tuple[str, ...] = ("slide",)) -> list[ManifestRow]:
    """Rows of a manifest CSV; paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise MsnError(path, "no such manifest")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise MsnError(
                    path,
                    f"missing column(s) {', '.join(missing)}; header must be "
                    "slide,annotations,split",
                )
            rows = []
            for i, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                if not row.get("slide"):
                    raise MsnError(path, f"line {i}: empty slide path")
                ann = row.get("annotations") or None
                rows.append(
                    ManifestRow(
                        _resolve(path, row["slide"]),
                        _resolve(path, ann) if ann else None,
                        row.get("split") or None,
                    )
                )
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise MsnError(path, f"cannot read manifest: {exc}") from exc
    if not rows:
        raise MsnError(path, "manifest lists no slides")
    return rows


def _resolve(manifest: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (manifest.parent / p)

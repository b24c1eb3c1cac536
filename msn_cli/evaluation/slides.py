"""Slide mode: a predicted mask TIFF against annotations or a label mask, window by window.

The prediction is the level-0 page of a (tiled, pyramidal) TIFF of class indices, as
``msn predict`` writes it; it is read through tifffile's Zarr view in windows aligned to its
tiles, so memory depends on the window, never on the slide. The truth is rasterised for exactly
the same window with :func:`msn_cli.io.annotations.open_labels` (the code ``msn tile`` uses).

A prediction may also be a downsample of the slide (e.g. a mask written at 1/16 of level 0):
then it is scored at its own resolution, with the truth rasterised at that downsample.

Manifest of pairs: a CSV with header ``pred,truth[,slide][,name]``; relative paths resolve
against the CSV's folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.errors import MsnError
from msn_cli.evaluation import SCHEMA_VERSION
from msn_cli.evaluation.results import scores
from msn_cli.io.manifest import read_rows, resolve
from msn_cli.io.maskreader import TiffMask, read_description
from msn_cli.metrics import ConfusionMatrix
from msn_cli.vocab import IGNORE

#: Target side of one streamed window, in mask pixels (rounded to whole TIFF tiles).
WINDOW = 2048


@dataclass(frozen=True)
class SlidePair:
    """One prediction and its truth; ``slide`` gives the level-0 size (else the mask's own)."""

    pred: Path
    truth: Path
    slide: Path | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.pred.name.split(".")[0]


def read_pairs(path: str | os.PathLike[str]) -> list[SlidePair]:
    """Rows of a ``pred,truth[,slide][,name]`` CSV, paths resolved against its folder."""
    rows = read_rows(path, ("pred", "truth"), "pred,truth[,slide]", "pairs")
    return [
        SlidePair(
            resolve(path, row["pred"]),
            resolve(path, row["truth"]),
            resolve(path, row["slide"]) if row.get("slide") else None,
            row.get("name") or None,
        )
        for _, row in rows
    ]


class MaskReader:
    """Level-0 page of a class-index TIFF, read in tile-aligned windows (a checked
    :class:`~msn_cli.io.maskreader.TiffMask`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise MsnError(path, "no such prediction mask")
        try:
            self._mask = TiffMask(path)
        except Exception as exc:
            raise MsnError(path, f"not a readable TIFF: {exc}") from None
        try:
            series = self._mask.series
            page = series.levels[0].pages[0]
            shape = tuple(series.levels[0].shape)
            squeezed = [s for s in shape if s != 1]
            if len(squeezed) != 2 or np.dtype(series.dtype).kind not in "ub":
                raise MsnError(path, f"prediction must be a 2-D unsigned mask, got {shape}")
            rows, cols = [i for i, n in enumerate(shape) if n != 1][:2]
            self._mask.open_pixels((rows, cols))
            self.height, self.width = squeezed
            tile_h = getattr(page, "tilelength", 0) or getattr(page, "rowsperstrip", 0) or 256
            tile_w = getattr(page, "tilewidth", 0) or self.width
            self.tile = (int(min(tile_h, self.height)), int(min(tile_w, self.width)))
        except MsnError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise MsnError(path, f"cannot read the prediction mask: {exc}") from None

    def window_size(self, target: int = WINDOW) -> tuple[int, int]:
        th, tw = self.tile
        return max(th, target // th * th), max(tw, target // tw * tw)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w)`` window at row ``y``, column ``x``."""
        return self._mask.read(slice(y, y + h), slice(x, x + w))

    def close(self) -> None:
        self._mask.close()


def _downsample(pred: MaskReader, size: tuple[int, int]) -> float:
    w, h = size
    ds = w / pred.width
    if abs(w / ds - pred.width) > 1 or abs(h / ds - pred.height) > 1 or ds < 1 - 1e-9:
        raise MsnError(
            pred.path,
            f"prediction is {pred.width}x{pred.height} but the slide is {w}x{h} "
            "(not the slide's shape at any downsample)",
        )
    return 1.0 if abs(ds - 1) < 1e-9 else ds


def evaluate_slide(
    pair: SlidePair,
    classes: Sequence[str],
    background: int = 0,
    mask_values: str | None = None,
    window: int = WINDOW,
    bar: Any = None,
) -> tuple[dict[str, Any], ConfusionMatrix, int]:
    """Score one prediction; returns (JSON entry, confusion matrix, unpredicted pixels)."""
    from msn_cli.io.annotations import open_labels

    nc = len(classes)
    pred = MaskReader(pair.pred)
    try:
        if pair.slide is not None:
            from msn_cli.io.slide import open_slide

            sl = open_slide(pair.slide)
            size = sl.dimensions
            sl.close()
        else:
            size = (pred.width, pred.height)
        ds = _downsample(pred, size)
        labels = open_labels(pair.truth, classes, size, background, mask_values)
        cm = ConfusionMatrix(nc)
        unpredicted = 0
        wh, ww = pred.window_size(window)
        for y in range(0, pred.height, wh):
            for x in range(0, pred.width, ww):
                h, w = min(wh, pred.height - y), min(ww, pred.width - x)
                p = pred.read(y, x, h, w)
                t = labels.region(x * ds, y * ds, ds, h, w)
                none = p == IGNORE
                if none.any():
                    unpredicted += int(np.count_nonzero(none & (t != IGNORE)))
                    t = np.where(none, np.uint8(IGNORE), t)
                bad = (p >= nc) & ~none
                if bad.any():
                    v = int(p[bad][0])
                    raise MsnError(
                        pair.pred, f"mask value {v} is not a class index (0..{nc - 1}, 255)"
                    )
                cm.update(p, t)
                if bar is not None:
                    bar.advance(h * w)
        close = getattr(labels, "close", None)
        if close:
            close()
    finally:
        pred.close()
    entry = {
        "name": pair.label,
        "pred": str(pair.pred),
        "truth": str(pair.truth),
        "slide": None if pair.slide is None else str(pair.slide),
        "size": [int(size[0]), int(size[1])],
        **scores(cm),
        "unpredicted_pixels": unpredicted,
    }
    return entry, cm, unpredicted


def recorded_classes(pairs: Sequence[SlidePair]) -> tuple[str, ...] | None:
    """The class names ``msn predict`` recorded in the masks (None if any mask has none).

    Masks recording different class lists are refused: pass ``--classes`` to choose.
    """
    found = set()
    for pair in pairs:
        desc = read_description(pair.pred) if pair.pred.is_file() else None
        names = desc.get("classes") if isinstance(desc, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        found.add(tuple(names))
    if len(found) > 1:
        raise MsnError(pairs[0].pred, "the masks record different classes; give --classes")
    return found.pop() if found else None


def mask_pixels(pair: SlidePair) -> int:
    reader = MaskReader(pair.pred)
    try:
        return reader.width * reader.height
    finally:
        reader.close()


def evaluate_slides(
    pairs: Sequence[SlidePair],
    classes: Sequence[str],
    background: int = 0,
    mask_values: str | None = None,
    method: str | None = None,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Per-slide and pooled scores of many pairs (see the package docstring for the JSON)."""
    from msn_cli.progress import progress

    if not pairs:
        raise MsnError(None, "no prediction/truth pairs to evaluate")
    pooled = ConfusionMatrix(len(classes))
    unpredicted = 0
    entries = []
    total = sum(mask_pixels(p) for p in pairs)
    with progress("evaluate slides", total=total, unit="px") as bar:
        for pair in pairs:
            entry, cm, un = evaluate_slide(pair, classes, background, mask_values, window, bar)
            entries.append(entry)
            pooled.merge(cm)
            unpredicted += un
    return {
        "kind": "slides",
        "method": method or (entries[0]["name"] if len(entries) == 1 else "slides"),
        "classes": list(classes),
        "n_slides": len(entries),
        "slides": entries,
        "pooled": {**scores(pooled), "unpredicted_pixels": unpredicted},
        "schema_version": SCHEMA_VERSION,
    }

"""Slides: opening them, and reading a level-0 box at any downsample.

Every OpenSlide format, OME-TIFF and other TIFFs through tifffile, and plain images (JPEG,
PNG, ...) with a virtual pyramid open with :func:`open_slide` as one small interface,
:class:`Slide` (both in :mod:`msn_cli.io.slide_formats`, importable from here). This module
adds one reading primitive, :func:`read_scaled`, which returns the pixels of a level-0 box at
any (non-integer) downsample; ``tile`` and ``predict`` read through it, so training and
inference see identical inputs. Also here: content fingerprints and one open handle per
thread (:func:`cached_slide`).

Coordinates are level-0 pixels, x right and y down. Pixels outside the image are 0 (the paper
zero-pads); transparent pixels inside the image (unscanned areas of some formats) are white.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msn_cli.io.slide_formats import (  # the interface and the readers (re-exported)
    LEVEL_TOLERANCE,
    LevelInfo,
    Slide,
    open_slide,
)

__all__ = [
    "LEVEL_TOLERANCE", "LevelBox", "LevelInfo", "Slide", "cached_slide", "cut", "fingerprint",
    "is_copy", "level_box", "open_slide", "read_padded", "read_scaled", "resample",
    "resample_margin",
]  # fmt: skip


@dataclass(frozen=True)
class LevelBox:
    """Where a level-0 box at some downsample lies on the pyramid level chosen to read it."""

    level: int
    x0: float
    y0: float
    x1: float
    y1: float

    def covering(self, margin: int) -> tuple[int, int, int, int]:
        """Integer level box (x, y, width, height) covering this one plus ``margin`` pixels."""
        ix0, iy0 = math.floor(self.x0) - margin, math.floor(self.y0) - margin
        ix1, iy1 = math.ceil(self.x1) + margin, math.ceil(self.y1) + margin
        return ix0, iy0, ix1 - ix0, iy1 - iy0


def level_box(slide: Slide, x0: float, y0: float, downsample: float, width: int, height: int):
    """The level to read a box from (at or just finer than ``downsample``) and the box on it."""
    level = slide.best_level(downsample)
    lv = slide.levels[level]
    return LevelBox(
        level,
        x0 / lv.downsample_x,
        y0 / lv.downsample_y,
        (x0 + width * downsample) / lv.downsample_x,
        (y0 + height * downsample) / lv.downsample_y,
    )


def resample_margin(downsample: float, level_downsample: float) -> int:
    """Source pixels needed around a box so that the filter never sees the array's border."""
    return int(math.ceil(downsample / level_downsample)) + 1


def cut(src: np.ndarray, ox: int, oy: int, box: LevelBox, width: int, height: int) -> np.ndarray:
    """The pixels of ``box`` at (height, width) from level pixels ``src`` whose (0, 0) is (ox, oy).

    An integer-aligned box at the level's own scale is sliced (exact); any other box is
    resampled once from the level's pixels (sub-pixel exact bilinear, antialiased when reducing).
    """
    bx0, by0 = box.x0 - ox, box.y0 - oy
    sx, sy = (box.x1 - box.x0) / width, (box.y1 - box.y0) / height
    if abs(sx - 1) < 1e-9 and abs(sy - 1) < 1e-9 and _is_int(bx0) and _is_int(by0):
        ix, iy = int(round(bx0)), int(round(by0))
        return src[iy : iy + height, ix : ix + width]
    return resample(src, (bx0, by0, box.x1 - ox, box.y1 - oy), width, height)


def is_copy(slide: Slide, x0: float, y0: float, downsample: float) -> bool:
    """Whether boxes at ``downsample`` from level-0 (x0, y0) on a grid of whole pixels are
    copied from a pyramid level (its own scale, whole-pixel origin), not resampled."""
    lv = slide.levels[slide.best_level(downsample)]
    for lds, origin in ((lv.downsample_x, x0), (lv.downsample_y, y0)):
        if abs(lds - downsample) > 1e-9 * downsample or not _is_int(origin / lds):
            return False
    return True


def read_scaled(
    slide: Slide, x0: float, y0: float, downsample: float, width: int, height: int
) -> np.ndarray:
    """Pixels of the level-0 box starting at (x0, y0) at ``downsample``, as (height, width, 3).

    Output pixel (r, c) covers level 0 from (x0 + c*downsample, y0 + r*downsample). The box may
    extend beyond the image (zeros there). Reads the best level once and resamples the rest.
    """
    box = level_box(slide, x0, y0, downsample, width, height)
    lv = slide.levels[box.level]
    ix, iy, w, h = box.covering(resample_margin(downsample, min(lv.downsample_x, lv.downsample_y)))
    src = read_padded(slide, box.level, ix, iy, w, h)
    return cut(src, ix, iy, box, width, height)


def resample(src: np.ndarray, box: tuple[float, float, float, float], width: int, height: int):
    """Resample the float ``box`` of ``src`` to (height, width) with antialiased bilinear."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(src))
    out = img.resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out)


def read_padded(slide: Slide, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Read a level box that may extend past the level's bounds (zeros there).

    A box inside the level is returned as the reader gives it (possibly a read-only,
    strided view): callers copy what they keep."""
    lv = slide.levels[level]
    if x >= 0 and y >= 0 and x + width <= lv.width and y + height <= lv.height:
        return slide.read_level(level, x, y, width, height)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    cx0, cy0 = max(x, 0), max(y, 0)
    cx1, cy1 = min(x + width, lv.width), min(y + height, lv.height)
    if cx1 > cx0 and cy1 > cy0:
        data = slide.read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = data
    return out


def fingerprint(path: str | os.PathLike[str], sample: int = 1 << 20, samples: int = 16) -> str:
    """A content fingerprint: SHA-256 of the size and of evenly spaced 1 MiB samples.

    Changes whenever the file is rewritten with other content, without reading a whole 3 GB
    slide. Directories (MRXS data folders) are fingerprinted file by file.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = [p] + (sorted(q for q in p.parent.glob(p.stem + "/*") if q.is_file()))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size};".encode())
        with open(f, "rb") as fh:
            if size <= sample * samples:
                h.update(fh.read())
            else:
                step = (size - sample) / (samples - 1)
                for i in range(samples):
                    fh.seek(int(i * step))
                    h.update(fh.read(sample))
    return h.hexdigest()[:32]


_local = threading.local()


def cached_slide(path: str | os.PathLike[str]) -> Slide:
    """One open handle per thread and path (readers are reused across regions)."""
    cache = getattr(_local, "slides", None)
    if cache is None:
        cache = _local.slides = {}
    key = str(path)
    if key not in cache:
        cache[key] = open_slide(path)
    return cache[key]


def _is_int(v: float) -> bool:
    return abs(v - round(v)) < 1e-6

"""Reading TIFF masks back: the one window reader, msn's description, a small level.

* :class:`TiffMask`: the level-0 image of a single-channel TIFF (a predicted mask, a label
  mask) read lazily through tifffile's Zarr view, so a window decodes only the tiles it
  touches. It leaves checks and their wording to its callers
  (:class:`~msn_cli.evaluation.slides.MaskReader`, :class:`~msn_cli.io.labelmask.MaskLabels`).
* :func:`read_description`: the JSON ``predict`` wrote into a mask, generic TIFF
  (:mod:`msn_cli.io.maskwriter`) or OME-TIFF (:mod:`msn_cli.io.ometiff`).
* :func:`read_level`: a whole reduced level of such a mask (GeoJSON tracing, overlays).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.io.maskwriter import DESCRIPTION_PREFIX, FACTOR
from msn_cli.io.ometiff import description_from_ome


class TiffMask:
    """Level 0 of a TIFF's first series, read in windows.

    Opening reads only the file's header; :attr:`series` describes the image, and
    :meth:`open_pixels` (once the caller has checked it) starts reading it. Exceptions are
    tifffile's and zarr's own: the caller names the file and the problem.

    Example:
        >>> mask = TiffMask("mask.tif")  # doctest: +SKIP
        >>> mask.open_pixels((0, 1))  # doctest: +SKIP
        >>> mask.read(slice(0, 256), slice(0, 256)).shape  # doctest: +SKIP
        (256, 256)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(path)
        self._pixels: Any = None
        self._index: list[Any] = []
        self._axes = (0, 1)

    @property
    def series(self):
        """tifffile's first series (its ``levels[0]`` is the full-resolution image)."""
        return self._tif.series[0]

    def open_pixels(self, axes: tuple[int, int]) -> None:
        """Start reading level 0, whose rows and columns are ``axes`` of its shape (every other
        axis has length 1)."""
        import zarr

        self._pixels = zarr.open_array(self._tif.aszarr(series=0, level=0), mode="r")
        self._index = [0] * self._pixels.ndim
        self._axes = axes

    def read(self, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
        """The (rows, cols) of level 0: a window (two slices) or an orthogonal selection (index
        arrays), as a 2-D array."""
        index = list(self._index)
        index[self._axes[0]], index[self._axes[1]] = rows, cols
        if isinstance(rows, slice) and isinstance(cols, slice):
            return np.asarray(self._pixels[tuple(index)])
        return self._pixels.oindex[tuple(index)]

    def close(self) -> None:
        self._tif.close()


def read_description(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON msn wrote into a mask (generic TIFF: its ImageDescription; OME-TIFF: the OME
    Image's Description), or None (not an msn mask, unreadable)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            text = tif.pages[0].description
            if not text.startswith(DESCRIPTION_PREFIX) and tif.is_ome:
                text = description_from_ome(tif.ome_metadata or "") or ""
    except Exception:  # any unreadable file is "not a finished mask"
        return None
    if not text.startswith(DESCRIPTION_PREFIX):
        return None
    try:
        found = json.loads(text[len(DESCRIPTION_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def read_level(path: str | os.PathLike[str], max_side: int) -> tuple[np.ndarray, int]:
    """The finest level of a mask (generic or OME-TIFF) whose sides are both at most
    ``max_side`` (else the coarsest), read whole, and its downsample."""
    import tifffile

    with tifffile.TiffFile(Path(path)) as tif:
        levels = tif.series[0].levels
        k = next(
            (i for i, lv in enumerate(levels) if max(lv.shape[-2:]) <= max_side),
            len(levels) - 1,
        )
        return levels[k].asarray(), FACTOR**k

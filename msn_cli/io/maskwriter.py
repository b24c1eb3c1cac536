"""Label masks as tiled, compressed, pyramidal TIFFs that OpenSlide, tifffile and QuPath open.

Layout (checked against OpenSlide 4 and tifffile in ``tests/test_predict.py``):

* every level is its own tiled IFD in the main chain, level 0 first (NewSubfileType 0; the
  reduced levels NewSubfileType 1), like the pyramids OpenSlide reads as ``generic-tiff``;
* one sample per pixel, uint8 class indices (``photometric=minisblack``), 256 x 256 tiles,
  Adobe deflate;
* level ``k`` has downsample ``4**k`` and size ``ceil(size / 4**k)``; levels are added until the
  coarsest fits in one tile;
* reduced levels are *sampled*, not averaged (class indices cannot be averaged): pixel ``(r, c)``
  of a level with downsample ``d`` is level-0 pixel ``(r*d + d//2, c*d + d//2)`` (clamped to the
  image), the pixel at the centre of the block it covers;
* the resolution tags hold the slide's microns per pixel, in centimetres, on every level (scaled
  by its downsample), so that ``openslide.mpp-x/y`` equal the slide's;
* ImageDescription starts with ``msn-mask`` followed by JSON (classes, source, the job key that
  ``predict`` uses to recognise a finished mask).

Level 0 is never held in memory: :func:`write_mask_tiff` takes a *factory* of level-0 row
blocks (any heights, full width) and calls it once per level, keeping only one strip of tiles
per level.

:mod:`msn_cli.io.ometiff` writes the same pyramid as an OME-TIFF (``--format ome-tiff``): same
levels, tiles, compression and sampling, the reduced levels in level 0's SubIFDs.
:mod:`msn_cli.io.maskreader` reads either back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

TILE = 256
FACTOR = 4
DESCRIPTION_PREFIX = "msn-mask "


def level_downsamples(width: int, height: int, tile: int = TILE) -> list[int]:
    """Downsamples 1, 4, 16, ... until the coarsest level fits in one tile.

    Example:
        >>> level_downsamples(1000, 300, 256)
        [1, 4]
    """
    ds = [1]
    while max(math.ceil(width / ds[-1]), math.ceil(height / ds[-1])) > tile:
        ds.append(ds[-1] * FACTOR)
    return ds


def level_size(width: int, height: int, downsample: int) -> tuple[int, int]:
    return math.ceil(width / downsample), math.ceil(height / downsample)


def sample_index(extent: int, downsample: int) -> np.ndarray:
    """Level-0 indices sampled by a level with ``downsample`` along an axis of ``extent``."""
    n = math.ceil(extent / downsample)
    return np.minimum(np.arange(n, dtype=np.int64) * downsample + downsample // 2, extent - 1)


def reduce_rows(
    blocks: Iterable[np.ndarray], width: int, height: int, downsample: int
) -> Iterator[np.ndarray]:
    """Rows of the level with ``downsample`` from level-0 row ``blocks`` (streamed)."""
    if downsample == 1:
        yield from blocks
        return
    rows = sample_index(height, downsample)
    cols = sample_index(width, downsample)
    y0 = 0
    for block in blocks:
        y1 = y0 + block.shape[0]
        a, b = np.searchsorted(rows, [y0, y1])
        if b > a:
            yield block[rows[a:b] - y0][:, cols]
        y0 = y1
    if y0 != height:
        raise ValueError(f"row blocks cover {y0} rows, expected {height}")


def strips(rows: Iterable[np.ndarray], height: int, tile: int) -> Iterator[np.ndarray]:
    """Regroup row blocks into strips of exactly ``tile`` rows (the last one padded with 0)."""
    pending: list[np.ndarray] = []
    n = 0
    done = 0
    for block in rows:
        while len(block):
            take = min(tile - n, len(block))
            pending.append(block[:take])
            n += take
            block = block[take:]
            if n == tile:
                yield np.concatenate(pending)
                done += n
                pending, n = [], 0
    if n:
        strip = np.concatenate(pending)
        pad = np.zeros((tile - n, *strip.shape[1:]), strip.dtype)
        yield np.concatenate([strip, pad])
        done += n
    if done != height:
        raise ValueError(f"strips cover {done} rows, expected {height}")


def tiles(strip_iter: Iterable[np.ndarray], width: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles of each strip, left to right, the last column padded with 0."""
    padded = math.ceil(width / tile) * tile
    for strip in strip_iter:
        if strip.shape[1] != padded:
            strip = np.pad(strip, ((0, 0), (0, padded - strip.shape[1])))
        for tx in range(0, padded, tile):
            yield strip[:, tx : tx + tile]


def write_mask_tiff(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    mpp: float | None,
    description: dict[str, Any] | None = None,
    tile: int = TILE,
    workers: int | None = None,
) -> list[int]:
    """Write the pyramidal mask to ``path`` (the caller renames it into place).

    ``blocks()`` yields uint8 level-0 row blocks ``(rows, width)`` top to bottom; it is called
    once per level. Returns the level downsamples.
    """
    import tifffile

    text = DESCRIPTION_PREFIX + json.dumps(description or {}, sort_keys=True)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:
        return write_levels(
            tif, width, height, blocks, mpp=mpp, first={"description": text}, tile=tile,
            workers=workers, in_subifds=False,
        )  # fmt: skip


def write_levels(
    tif: Any,
    width: int,
    height: int,
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    mpp: float | None,
    first: dict[str, Any],
    tile: int,
    workers: int | None,
    in_subifds: bool,
) -> list[int]:
    """Every level into an open ``tifffile.TiffWriter``; ``first``: level 0's extra arguments.

    ``in_subifds``: the reduced levels go to level 0's SubIFDs (OME-TIFF) instead of the main
    IFD chain (the generic pyramid OpenSlide reads).
    """
    downsamples = level_downsamples(width, height, tile)
    for i, d in enumerate(downsamples):
        lw, lh = level_size(width, height, d)
        extra: dict[str, Any] = {"metadata": None}
        if mpp:
            res = 1e4 / (mpp * d)
            extra.update(resolution=(res, res), resolutionunit="CENTIMETER")
        if i == 0:
            extra.update(software="msn predict", **first)
            if in_subifds:
                extra["subifds"] = len(downsamples) - 1
        rows = reduce_rows(blocks(), width, height, d)
        tif.write(
            tiles(strips(rows, lh, tile), lw, tile),
            shape=(lh, lw),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="minisblack",
            compression="zlib",
            subfiletype=0 if i == 0 else 1,
            maxworkers=workers,
            **extra,
        )
    return downsamples

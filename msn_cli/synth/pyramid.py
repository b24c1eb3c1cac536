"""A streaming writer of pyramidal tiled TIFFs that OpenSlide opens as ``generic-tiff``.

Level 0 is rendered and written strip by strip (a strip is a few tile rows, full width); each
strip is box-reduced into an in-memory copy of the next level (1/16 of level 0 for a 4x
pyramid), from which the coarser levels are made. Memory is therefore about one strip plus
level 1, whatever the slide size: about 100 MB for a 20480 x 20480 slide.

Layout (checked against OpenSlide 4): every level is its own tiled IFD in the main chain, level
0 first (NewSubfileType 0, later levels 1 = reduced image), RGB stored as JPEG YCbCr 4:2:0 by
default, resolution tags in centimetres so that ``openslide.mpp-x/y`` are set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from msn_cli.errors import MsnUsageError

#: Compression names accepted by :func:`write_pyramid` and the tifffile codec they map to.
COMPRESSIONS = {"jpeg": "jpeg", "deflate": "zlib", "lzw": "lzw", "none": None}


def level_dimensions(
    width: int, height: int, downsamples: Sequence[float]
) -> list[tuple[int, int]]:
    """(w, h) of each level: ``ceil(size / downsample)``, so integer pyramids lose no pixel."""
    return [
        (max(1, math.ceil(width / d - 1e-9)), max(1, math.ceil(height / d - 1e-9)))
        for d in downsamples
    ]


def check_levels(path: str | os.PathLike[str], downsamples: Sequence[float]) -> list[float]:
    """Validate level downsamples: start at 1, strictly increasing."""
    levels = [float(d) for d in downsamples]
    if not levels or abs(levels[0] - 1.0) > 1e-9:
        raise MsnUsageError(path, f"pyramid levels must start at 1, got {list(downsamples)}")
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise MsnUsageError(path, f"pyramid levels must increase, got {list(downsamples)}")
    return levels


def _tiles(strip: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Tiles of a strip whose height is a multiple of ``tile``, row-major."""
    h, w = strip.shape[:2]
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            yield strip[ty : ty + tile, tx : tx + tile]


def _reduce(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``img`` (H, W, 3) to ``size`` (w, h); exact block means for integer ratios."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    f = round(w / size[0])
    if f >= 1 and math.ceil(w / f) == size[0] and math.ceil(h / f) == size[1]:
        return np.asarray(pil.reduce(f)) if f > 1 else img
    return np.asarray(pil.resize(size, Image.Resampling.BOX))


def write_pyramid(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    render: Callable[[int, int, int], np.ndarray],
    *,
    levels: Sequence[float] = (1, 4, 16, 64),
    mpp: float = 0.5,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    workers: int | None = None,
) -> list[tuple[int, int]]:
    """Write a pyramidal tiled TIFF whose level 0 is produced by ``render``.

    ``render(y0, y1, w)`` returns the uint8 RGB rows ``y0:y1`` of level 0, ``w`` columns wide
    (``w`` is ``width`` rounded up to whole tiles; columns past ``width`` are cut off by the
    reader). The file appears whole or not at all (written under a temporary name, then
    renamed). Returns the level dimensions.

    Example:
        >>> write_pyramid("s.tif", 1000, 700, lambda y0, y1, w: np.zeros((y1 - y0, w, 3), "u1"))
        ... # doctest: +SKIP
    """
    import tifffile

    path = Path(path)
    downsamples = check_levels(path, levels)
    if compression not in COMPRESSIONS:
        raise MsnUsageError(path, f"compression must be one of {sorted(COMPRESSIONS)}")
    if tile % 16 or tile <= 0:
        raise MsnUsageError(path, f"tile size must be a positive multiple of 16, got {tile}")
    dims = level_dimensions(width, height, downsamples)
    # level 0 is reduced on the fly by an integer factor into `first` (kept in memory)
    factor = int(math.floor(downsamples[1])) if len(downsamples) > 1 else 1
    strip_h = math.lcm(tile, factor)
    while strip_h < 256:
        strip_h *= 2
    padded_w = math.ceil(width / tile) * tile
    first = None
    if len(downsamples) > 1:
        first = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), np.uint8)

    def make_strip(y0: int) -> np.ndarray:
        y1 = min(height, y0 + strip_h)
        strip = np.asarray(render(y0, y1, padded_w), np.uint8)
        if first is not None:
            part = _reduce(
                np.ascontiguousarray(strip[: y1 - y0, :width]),
                (math.ceil(width / factor), math.ceil((y1 - y0) / factor)),
            )
            first[y0 // factor : y0 // factor + part.shape[0]] = part
        rows = math.ceil((y1 - y0) / tile) * tile
        if rows != strip.shape[0]:
            pad = np.zeros((rows - strip.shape[0], padded_w, 3), np.uint8)
            strip = np.concatenate([strip, pad])
        return strip

    def level0() -> Iterator[np.ndarray]:
        # render the next strip in a thread while this one is being encoded
        starts = list(range(0, height, strip_h))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(make_strip, starts[0])
            for nxt in [*starts[1:], None]:
                strip = pending.result()
                if nxt is not None:
                    pending = pool.submit(make_strip, nxt)
                yield from _tiles(strip, tile)

    codec = COMPRESSIONS[compression]
    common = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": codec,
        "compressionargs": {"level": quality} if codec == "jpeg" else None,
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "maxworkers": workers,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    bigtiff = width * height * 3 * 4 / 3 > 2**31
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            res = 1e4 / mpp
            tif.write(
                level0(),
                shape=(height, width, 3),
                dtype=np.uint8,
                resolution=(res, res),
                subfiletype=0,
                **common,
            )
            prev = first
            for w, h in dims[1:]:
                prev = _reduce(prev, (w, h))
                rx, ry = 1e4 / (mpp * width / w), 1e4 / (mpp * height / h)
                tif.write(prev, resolution=(rx, ry), subfiletype=1, **common)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dims

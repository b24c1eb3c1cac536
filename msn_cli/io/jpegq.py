"""The JPEG quality a slide's pyramid level was written at, estimated from its tables.

``tile``'s default image codec re-encodes a branch image that is a plain copy of a JPEG level
(same scale, chunks on the level's 8-pixel block grid) at that level's own quality: the
decoded pixels are then quantised again by the same tables on the same blocks, which changes
them very little and costs about the source's bytes. Everything else (resampled scales) is
fresh content for the encoder and gets a fixed high quality (see the README, "The patch
store").

Example:
    >>> ijg_quality(STANDARD_LUMA)
    50
    >>> ijg_quality([max(1, (v * 20 + 50) // 100) for v in STANDARD_LUMA])
    90
"""

from __future__ import annotations

import os
from collections.abc import Sequence

#: The IJG (libjpeg) luminance table at quality 50, Annex K of the JPEG standard.
STANDARD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def ijg_quality(luma: Sequence[int]) -> int:
    """The IJG quality (1-100) whose scaled standard table best matches ``luma`` (64 values)."""
    scale = 100.0 * sum(luma) / sum(STANDARD_LUMA)
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


def luma_table(jpeg: bytes) -> list[int] | None:
    """The first luminance (id 0) quantisation table in JPEG bytes, or None."""
    i = 2 if jpeg[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            return None
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xDB:  # DQT: one or more (precision/id, 64 values) tables
            j, end = i + 4, i + 2 + length
            while j < end:
                precision, table_id = jpeg[j] >> 4, jpeg[j] & 15
                size = 128 if precision else 64
                raw = jpeg[j + 1 : j + 1 + size]
                values = (
                    [int.from_bytes(raw[k : k + 2], "big") for k in range(0, 128, 2)]
                    if precision
                    else list(raw)
                )
                if table_id == 0 and len(values) == 64:
                    return values
                j += 1 + size
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no table before the data
            return None
        i += 2 + length
    return None


def subsampling(jpeg: bytes) -> str | None:
    """Chroma subsampling (``444``, ``422``, ``420``) from a JPEG's frame header, or None."""
    i = 2 if jpeg[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # SOF: components with their sampling factors
            n = jpeg[i + 9]
            factors = [(jpeg[i + 11 + 3 * k] >> 4, jpeg[i + 11 + 3 * k] & 15) for k in range(n)]
            if n != 3 or factors[1] != (1, 1) or factors[2] != (1, 1):
                return None
            return {(1, 1): "444", (2, 1): "422", (2, 2): "420"}.get(factors[0])
        if marker == 0xDA:
            return None
        i += 2 + length
    return None


def level_jpeg(path: str | os.PathLike[str], level: int) -> tuple[int, str] | None:
    """(quality, chroma subsampling) of pyramid level ``level`` of a TIFF-based slide (SVS,
    generic TIFF, NDPI, OME) or of a plain JPEG image; None when it is not JPEG-compressed or
    cannot be read."""
    try:
        return _level_jpeg(os.fspath(path), level)
    except Exception:  # any unreadable file simply has no known quality
        return None


def _level_jpeg(path: str, level: int) -> tuple[int, str] | None:
    if path.lower().endswith((".jpg", ".jpeg")):
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        table, sub = luma_table(head), subsampling(head)
        return (ijg_quality(table), sub) if table and sub and level == 0 else None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        if level >= len(levels):
            return None
        page = levels[level].keyframe
        if page.compression != 7:  # JPEG
            return None
        offset, count = page.dataoffsets[0], page.databytecounts[0]
        tif.filehandle.seek(offset)
        tile = tif.filehandle.read(min(count, 1 << 16))
        table = (luma_table(page.jpegtables) if page.jpegtables else None) or luma_table(tile)
        sub = subsampling(tile)
        return (ijg_quality(table), sub) if table and sub else None

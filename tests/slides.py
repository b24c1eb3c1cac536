"""Tiny test slides written by the tests themselves (tifffile), read back through OpenSlide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB image with structure at every scale (so misalignment shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    g = (xx * 7 + yy * 3) % 256
    b = rng.integers(0, 256, (height, width)).astype(np.float32)
    img = np.stack([r, g, b], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def downsample_area(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[0] // factor, img.shape[1] // factor
    v = img[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).astype(np.float32)
    return np.round(v.mean(axis=(1, 3))).astype(np.uint8)


def write_pyramid(
    path: Path,
    image: np.ndarray,
    downsamples=(1, 4, 16),
    tile: int = 128,
    compression: str = "deflate",
    mpp: float | None = 0.5,
    quality: int | None = None,
) -> list[np.ndarray]:
    """Write ``image`` as a tiled pyramidal TIFF (each level its own IFD); returns the levels."""
    levels = [image] + [downsample_area(image, d) for d in downsamples[1:]]
    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, lvl in enumerate(levels):
            tif.write(
                lvl,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs={"level": quality} if quality else None,
                subfiletype=0 if i == 0 else 1,
                **(kwargs if i == 0 else {}),
            )
    return levels

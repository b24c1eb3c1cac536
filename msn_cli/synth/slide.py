"""One synthetic whole-slide image: a pyramidal TIFF plus its exact ground truth."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnUsageError
from msn_cli.io.annotations import LabelledPolygon, write_asap_xml, write_geojson
from msn_cli.synth import texture
from msn_cli.synth.geometry import bbox, fill_polygon
from msn_cli.synth.layout import CLASS_COLORS, CLASS_NAMES, Layout, make_layout
from msn_cli.synth.pyramid import level_dimensions, write_pyramid
from msn_cli.vocab import IGNORE


@dataclass(frozen=True)
class SlideTruth:
    """What :func:`write_synthetic_slide` wrote, and the exact labels behind it.

    Example:
        >>> truth = write_synthetic_slide(tmp / "s.tif", size=(1024, 768), seed=1)  # doctest: +SKIP
        >>> truth.label_map(16).shape  # doctest: +SKIP
        (48, 64)
    """

    path: Path
    size: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    layout: Layout
    seed: int
    geojson: Path | None = None
    xml: Path | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def label_map(
        self, downsample: float = 1.0, box: tuple[int, int, int, int] | None = None
    ) -> np.ndarray:
        """Class index per pixel (255 = unannotated), sampled at pixel centres.

        ``box`` = (x, y, w, h) in output pixels at this downsample; default the whole slide.
        """
        w0, h0 = self.size
        if box is None:
            box = (0, 0, int(np.ceil(w0 / downsample)), int(np.ceil(h0 / downsample)))
        x, y, w, h = box
        out = np.full((h, w), IGNORE, np.uint8)
        origin = (x * downsample, y * downsample)
        for region in self.layout.regions:
            for part in region.parts:
                fill_polygon(out, part, region.label, origin=origin, scale=downsample)
        return out

    def appearance_map(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Texture code per level-0 pixel (see :data:`texture.APPEARANCES`)."""
        return _appearance(self.layout, x0, y0, w, h)

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The exact level-0 RGB pixels of a box, as written before compression."""
        tiles = texture.texture_tiles(self.seed)
        return texture.paint(_appearance(self.layout, x0, y0, w, h), tiles, x0, y0)


def _appearance(layout: Layout, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    origin = (float(x0), float(y0))

    def fill(poly: np.ndarray, value: int) -> None:
        bx0, by0, bx1, by1 = bbox(poly)
        if by1 >= y0 and by0 <= y0 + h and bx1 >= x0 and bx0 <= x0 + w:
            fill_polygon(out, poly, value, origin=origin)

    for poly in layout.tissue:
        fill(poly, texture.NORMAL)
    tex = {0: texture.NORMAL, 1: texture.BENIGN, 2: texture.WALL, 3: texture.TUMOUR}
    for region in layout.regions:
        for part in region.parts:
            fill(part, tex[region.label])
        for wall in region.walls:
            fill(wall, texture.TUMOUR)
    return out


def region_polygons(regions) -> list[LabelledPolygon]:
    """One labelled polygon per region part (coordinates to 1/100 px: compact, exact enough)."""
    return [
        LabelledPolygon(r.label, r.name, np.round(part.astype(np.float64), 2))
        for r in regions
        for part in r.parts
    ]


def write_synthetic_slide(
    path: str | os.PathLike[str],
    size: tuple[int, int] = (4096, 4096),
    seed: int = 0,
    *,
    levels: Sequence[float] = (1, 4, 16, 64),
    mpp: float = 0.5,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    patch: int = 256,
    annotations: bool = True,
    workers: int | None = None,
) -> SlideTruth:
    """Write one synthetic slide as a pyramidal tiled TIFF (plus annotations beside it).

    ``size`` is the level-0 (width, height); ``levels`` the downsample of each pyramid level
    (any increasing values starting at 1; ``(1,)`` gives a single-level tiled TIFF); ``mpp`` the
    level-0 microns per pixel; ``compression`` one of jpeg, deflate, lzw, none. With
    ``annotations``, ``<stem>.geojson`` (QuPath) and ``<stem>.xml`` (ASAP) are written beside
    the slide. ``patch`` scales the structures (designed for 256-pixel X1 patches).
    Deterministic: the same arguments give the same pixels and the same annotations.
    """
    path = Path(path)
    width, height = (int(v) for v in size)
    if width < 64 or height < 64:
        raise MsnUsageError(path, f"slide size must be at least 64 x 64, got {width} x {height}")
    if mpp <= 0:
        raise MsnUsageError(path, f"mpp must be positive, got {mpp}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, width, height, 0x5A1DE]))
    layout = make_layout(rng, width, height, patch)
    tiles = texture.texture_tiles(seed)

    def render(y0: int, y1: int, w: int) -> np.ndarray:
        return texture.paint(_appearance(layout, 0, y0, w, y1 - y0), tiles, 0, y0)

    dims = write_pyramid(
        path,
        width,
        height,
        render,
        levels=levels,
        mpp=mpp,
        tile=tile,
        compression=compression,
        quality=quality,
        workers=workers,
    )
    geojson = xml = None
    if annotations:
        polygons = region_polygons(layout.regions)
        colors = dict(zip(CLASS_NAMES, CLASS_COLORS, strict=True))
        geojson, xml = path.with_suffix(".geojson"), path.with_suffix(".xml")
        write_geojson(geojson, polygons, colors)
        write_asap_xml(xml, polygons, colors)
    downsamples = tuple((width / w + height / h) / 2 for w, h in dims)
    return SlideTruth(
        path, (width, height), tuple(dims), downsamples, mpp, layout, seed, geojson, xml
    )


__all__ = ["SlideTruth", "level_dimensions", "write_synthetic_slide"]

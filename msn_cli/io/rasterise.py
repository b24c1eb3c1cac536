"""Label vocabulary (class-name matching, ignore label), labelled polygons and their rasterisation.

One coordinate convention for every label source (see :class:`LabelSource`): level-0 pixel
coordinates, x to the right, y down; the level-0 image covers ``[0, width) x [0, height)``.
A region is a grid of output pixels; output pixel ``(r, c)`` covers the level-0 square starting at
``(x0 + c * downsample, y0 + r * downsample)`` and takes the label found at its centre
``(x0 + (c + 0.5) * downsample, y0 + (r + 0.5) * downsample)``.

Polygon fill is the even-odd rule over all rings of a polygon (exterior and holes together), so
holes need no particular orientation and self-intersecting rings do not crash. A centre lying
exactly on an edge is inside for left/top edges and outside for right/bottom ones (half-open
``[xmin, xmax) x [ymin, ymax)`` for an axis-aligned square), so polygons sharing an edge neither
overlap nor leave a gap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.vocab import IGNORE  # also imported from here by stages/evaluate.py

BACH_CLASSES = ("normal", "benign", "in situ", "invasive")
BACH_ALIASES: dict[str, str] = {
    "carcinoma in situ": "in situ",
    "in situ carcinoma": "in situ",
    "invasive carcinoma": "invasive",
}
"""Default aliases: BACH's XML group names to the short class names."""


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def match_class(
    name: str,
    classes: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    path: str | os.PathLike[str] | None = None,
    where: str = "",
    *,
    usage: bool = False,
) -> int:
    """Index of ``name`` in ``classes`` (case/whitespace-insensitive, aliases applied) or MsnError.

    Example:
        >>> match_class(" Carcinoma in situ", BACH_CLASSES)
        2
    """
    known = {_norm(c): i for i, c in enumerate(classes)}
    table = {_norm(k): _norm(v) for k, v in (BACH_ALIASES if aliases is None else aliases).items()}
    key = _norm(name)
    key = key if key in known else table.get(key, key)
    if key in known:
        return known[key]
    err = MsnUsageError if usage else MsnError
    prefix = f"{where}: " if where else ""
    raise err(path, f"{prefix}unknown class {name!r} (known classes: {', '.join(classes)})")


@runtime_checkable
class LabelSource(Protocol):
    """Anything that answers "which class is at each pixel of this region?".

    Example:
        >>> src.region(1024.0, 2048.0, 4.0, height=256, width=256).shape  # doctest: +SKIP
        (256, 256)
    """

    image_size: tuple[int, int]
    """Level-0 ``(width, height)`` of the slide the labels belong to."""

    def region(
        self, x0: float, y0: float, downsample: float, height: int, width: int
    ) -> np.ndarray:
        """uint8 ``(height, width)`` class indices; 255 outside the image (see module doc)."""
        ...


@dataclass(frozen=True, eq=False)
class LabelledPolygon:
    """One polygon (exterior ring plus optional holes) with its class.

    Rings are ``(n, 2)`` float64 arrays of level-0 ``x, y``; closing the ring (repeating the first
    point) is optional. A GeoJSON MultiPolygon becomes one ``LabelledPolygon`` per part.

    Example:
        >>> sq = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], float)
        >>> LabelledPolygon(label=1, name="benign", exterior=sq).bounds
        (10.0, 10.0, 20.0, 20.0)
    """

    label: int
    name: str
    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()
    _edges: np.ndarray = field(init=False, repr=False)
    _box: tuple[float, float, float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rings = [
            np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in (self.exterior, *self.holes)
        ]
        if not len(rings[0]):
            raise ValueError("a polygon needs at least one exterior point")
        object.__setattr__(self, "exterior", rings[0])
        object.__setattr__(self, "holes", tuple(rings[1:]))
        # Edges of all rings as rows (xa, ya, xb, yb), each ring closed.
        edges = np.concatenate(
            [np.concatenate([r, r[1:], r[:1]]).reshape(2, -1, 2) for r in rings if len(r)],
            axis=1,
        )
        edges = edges.transpose(1, 0, 2).reshape(-1, 4)
        object.__setattr__(self, "_edges", edges)
        lo, hi = edges[:, :2].min(axis=0).tolist(), edges[:, :2].max(axis=0).tolist()
        object.__setattr__(self, "_box", (lo[0], lo[1], hi[0], hi[1]))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` over all rings."""
        return self._box


def _first_index_at_or_after(v: np.ndarray | float, origin: float, step: float) -> np.ndarray:
    """Smallest output index whose pixel centre ``origin + (i + 0.5) * step`` is >= ``v``."""
    return np.ceil((np.asarray(v, dtype=np.float64) - origin) / step - 0.5).astype(np.int64)


def fill_polygon(
    edges: np.ndarray, x0: float, y0: float, downsample: float, height: int, width: int
) -> np.ndarray:
    """Even-odd coverage (bool ``(height, width)``) of the polygon given by its ``edges``.

    Vectorised scanline: every edge is expanded into the rows whose centre line it crosses
    (half-open in y), each crossing toggles the parity from the first column whose centre lies at
    or right of it, and a cumulative sum along the row gives the parity of every pixel.
    """
    out = np.zeros((height, width), dtype=bool)
    if not len(edges) or height <= 0 or width <= 0:
        return out
    xa, ya, xb, yb = edges.T
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    r_lo = np.clip(_first_index_at_or_after(lo, y0, downsample), 0, height)
    r_hi = np.clip(_first_index_at_or_after(hi, y0, downsample), 0, height)
    n_rows = r_hi - r_lo  # horizontal edges and edges outside the region give 0
    keep = n_rows > 0
    if not keep.any():
        return out
    xa, ya, xb, yb, r_lo, n_rows = xa[keep], ya[keep], xb[keep], yb[keep], r_lo[keep], n_rows[keep]
    total = int(n_rows.sum())
    edge_of = np.repeat(np.arange(len(n_rows)), n_rows)
    starts = np.cumsum(n_rows) - n_rows
    rows = r_lo[edge_of] + (np.arange(total) - starts[edge_of])
    y = y0 + (rows + 0.5) * downsample
    t = (y - ya[edge_of]) / (yb[edge_of] - ya[edge_of])
    x = xa[edge_of] + t * (xb[edge_of] - xa[edge_of])
    cols = np.clip(_first_index_at_or_after(x, x0, downsample), 0, width)
    toggles = np.zeros((height, width + 1), dtype=np.uint8)
    np.bitwise_xor.at(toggles, (rows, cols), 1)  # one byte per pixel: 8x less than int64 sums
    return np.bitwise_xor.accumulate(toggles[:, :width], axis=1).view(bool)


def inside_image(
    image_size: tuple[int, int], x0: float, y0: float, downsample: float, height: int, width: int
) -> tuple[slice, slice]:
    """Rows and columns of a region whose pixel centres lie inside the level-0 image."""
    w, h = image_size
    r = np.clip(_first_index_at_or_after(np.array([0.0, h]), y0, downsample), 0, height)
    c = np.clip(_first_index_at_or_after(np.array([0.0, w]), x0, downsample), 0, width)
    return slice(int(r[0]), int(r[1])), slice(int(c[0]), int(c[1]))


def _check_region(downsample: float, height: int, width: int) -> None:
    if not (math.isfinite(downsample) and downsample > 0) or height < 0 or width < 0:
        raise ValueError(f"bad region: downsample={downsample}, size={width}x{height}")


class PolygonLabels:
    """A :class:`LabelSource` painting polygons in order (later ones over earlier ones).

    ``background`` is the label of image pixels no polygon covers: 0 (BACH "normal") or
    :data:`IGNORE` for "unannotated = ignore". A hole reverts to whatever lay under its polygon.

    Example:
        >>> labels = PolygonLabels(polygons, (2048, 1536), background=0)  # doctest: +SKIP
        >>> y = labels.region(0.0, 0.0, 8.0, 192, 256)  # doctest: +SKIP
    """

    def __init__(
        self,
        polygons: Sequence[LabelledPolygon],
        image_size: tuple[int, int],
        background: int = 0,
    ) -> None:
        self.polygons = list(polygons)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.background = int(background)
        if not 0 <= self.background <= 255:
            raise ValueError(f"background must be in 0..255, got {background}")
        self._bounds = np.array([p.bounds for p in self.polygons], dtype=np.float64).reshape(-1, 4)
        self._labels = np.array([p.label for p in self.polygons], dtype=np.int64)

    def region(
        self, x0: float, y0: float, downsample: float, height: int, width: int
    ) -> np.ndarray:
        _check_region(downsample, height, width)
        out = np.full((height, width), IGNORE, dtype=np.uint8)
        rows, cols = inside_image(self.image_size, x0, y0, downsample, height, width)
        out[rows, cols] = self.background
        x1, y1 = x0 + width * downsample, y0 + height * downsample
        b = self._bounds
        hit = np.flatnonzero((b[:, 2] >= x0) & (b[:, 0] <= x1) & (b[:, 3] >= y0) & (b[:, 1] <= y1))
        # Window of in-image output pixels whose centres can fall inside each polygon.
        ra = np.maximum(_first_index_at_or_after(b[hit, 1], y0, downsample), rows.start)
        rb = np.minimum(_first_index_at_or_after(b[hit, 3], y0, downsample), rows.stop)
        ca = np.maximum(_first_index_at_or_after(b[hit, 0], x0, downsample), cols.start)
        cb = np.minimum(_first_index_at_or_after(b[hit, 2], x0, downsample), cols.stop)
        keep = (ra < rb) & (ca < cb)
        hit, ra, rb, ca, cb = hit[keep], ra[keep], rb[keep], ca[keep], cb[keep]
        alone = _alone(ra, rb, ca, cb)
        # Polygons whose windows meet no other window can be painted in any order: one scanline
        # pass per class over all their edges (their fills have disjoint supports, so the
        # even-odd parity of the union is each one's own). 111k small squares: one pass, not
        # 111k Python calls.
        if alone.any():
            r0, r1 = int(ra[alone].min()), int(rb[alone].max())
            c0, c1 = int(ca[alone].min()), int(cb[alone].max())
            group = hit[alone]
            for label in np.unique(self._labels[group]).tolist():
                same = group[self._labels[group] == label]
                edges = np.concatenate([self.polygons[i]._edges for i in same])
                ox, oy = x0 + c0 * downsample, y0 + r0 * downsample
                mask = fill_polygon(edges, ox, oy, downsample, r1 - r0, c1 - c0)
                out[r0:r1, c0:c1][mask] = label
        # The rest overlap another window: painted one by one, later over earlier.
        for i, a, b_, c, d in zip(
            hit[~alone], ra[~alone], rb[~alone], ca[~alone], cb[~alone], strict=True
        ):
            poly = self.polygons[i]
            a, b_, c, d = int(a), int(b_), int(c), int(d)
            ox, oy = x0 + c * downsample, y0 + a * downsample
            mask = fill_polygon(poly._edges, ox, oy, downsample, b_ - a, d - c)
            out[a:b_, c:d][mask] = poly.label
        return out


def _alone(ra: np.ndarray, rb: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Which windows ``[ra, rb) x [ca, cb)`` share no pixel with any other window.

    Coverage by a 2-D difference array over the windows' bounding box, then a summed-area
    table of "covered twice": a window is alone when none of its pixels is. About 9 bytes a
    pixel of that box; a few windows are simply painted one by one.
    """
    if len(ra) < 8:
        return np.zeros(len(ra), dtype=bool)
    r0, c0 = int(ra.min()), int(ca.min())
    ra, rb, ca, cb = ra - r0, rb - r0, ca - c0, cb - c0
    h, w = int(rb.max()), int(cb.max())
    count = np.zeros((h + 1, w + 1), dtype=np.int32)
    np.add.at(count, (ra, ca), 1)
    np.add.at(count, (ra, cb), -1)
    np.add.at(count, (rb, ca), -1)
    np.add.at(count, (rb, cb), 1)
    np.cumsum(count, axis=0, out=count)
    np.cumsum(count, axis=1, out=count)
    twice = np.zeros((h + 1, w + 1), dtype=np.int32)
    twice[1:, 1:] = count[:h, :w] > 1
    del count
    np.cumsum(twice, axis=0, out=twice)
    np.cumsum(twice, axis=1, out=twice)
    return (twice[rb, cb] - twice[ra, cb] - twice[rb, ca] + twice[ra, ca]) == 0


def out_of_bounds(polygons: Sequence[LabelledPolygon], image_size: tuple[int, int]) -> int:
    """Number of polygons extending outside the level-0 image ``(width, height)``.

    Their outside parts are ignored by :meth:`PolygonLabels.region` (label 255); the CLI warns.
    """
    w, h = image_size
    return sum(1 for p in polygons if (b := p.bounds)[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h)


def entirely_outside(polygons: Sequence[LabelledPolygon], image_size: tuple[int, int]) -> int:
    """Number of polygons whose bounding box does not meet the image at all."""
    w, h = image_size
    return sum(
        1 for p in polygons if (b := p.bounds)[2] <= 0 or b[3] <= 0 or b[0] >= w or b[1] >= h
    )

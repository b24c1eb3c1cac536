"""What ``predict`` derives from a mask: QuPath GeoJSON polygons, an overlay PNG, probabilities.

* :func:`trace_polygons`: class regions of a (downsampled) label mask as polygons with holes,
  by marching squares (contourpy, matplotlib's tracer) on each class's 0/1 map at level 0.5.
  Vertices lie half-way between pixel centres, so rasterising the polygons at the traced
  resolution (pixel centres, as :class:`~msn_cli.io.annotations.PolygonLabels` does) gives the
  traced mask back exactly; collinear vertices are dropped (exactness is kept).
  :func:`trace_regions` also gives each polygon its pixel count at the traced level and the
  mean of a value map over those pixels (the mean class probability of ``--geojson``).
* :func:`own_class_probability`: the probability of each traced pixel's own class, read from
  the ``--probabilities`` samples streamed strip by strip (see its docstring for the sampling).
* :func:`write_overlay`: a thumbnail of the slide blended with the mask and a class legend.
* :class:`ProbabilityWriter`: per-class probabilities, one value per ``d x d`` level-0 block,
  float16, in a Zarr v3 array ``(classes, rows, cols)`` written strip by strip.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msn_cli.io.annotations import LabelledPolygon
from msn_cli.io.maskwriter import sample_index
from msn_cli.io.rasterise import fill_polygon
from msn_cli.palette import class_color, color_table


def _simplify(ring: np.ndarray) -> np.ndarray:
    """Drop the closing duplicate and every vertex on a straight line between its neighbours."""
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 4:
        return ring
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    a, b = ring - prev, nxt - ring
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return ring[np.abs(cross) > 1e-9]


@dataclass(frozen=True)
class TracedRegion:
    """One traced polygon, the traced-level pixels it covers and the mean value over them."""

    polygon: LabelledPolygon
    pixels: int
    mean: float | None = None  # None: no value map given


def trace_polygons(
    labels: np.ndarray,
    downsample: float,
    classes: Sequence[str],
    image_size: tuple[int, int],
    skip: Sequence[int] = (0,),
    offset: tuple[float, float] = (0.0, 0.0),
) -> list[LabelledPolygon]:
    """Polygons (level-0 coordinates minus ``offset``) of every class of ``labels`` but ``skip``.

    ``labels`` pixel ``(r, c)`` stands for the level-0 block ``[c*d, (c+1)*d) x [r*d, (r+1)*d)``
    (as the mask pyramid samples it); coordinates are clipped to the image ``(width, height)``.
    """
    regions = trace_regions(labels, downsample, classes, image_size, skip, offset)
    return [r.polygon for r in regions]


def trace_regions(
    labels: np.ndarray,
    downsample: float,
    classes: Sequence[str],
    image_size: tuple[int, int],
    skip: Sequence[int] = (0,),
    offset: tuple[float, float] = (0.0, 0.0),
    values: np.ndarray | None = None,
) -> list[TracedRegion]:
    """:func:`trace_polygons`, each polygon with the ``labels`` pixels it covers (their
    centres lie inside it: exactly the pixels of its connected region, holes excluded) and,
    given ``values`` (same shape as ``labels``), the mean of ``values`` over those pixels."""
    import contourpy

    w0, h0 = image_size
    out: list[TracedRegion] = []
    for k in np.unique(labels).tolist():
        if k in skip or k >= len(classes):
            continue
        hit = labels == k
        rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
        r0, c0 = int(rows[0]), int(cols[0])
        z = np.pad(hit[r0 : rows[-1] + 1, c0 : cols[-1] + 1], 1).astype(np.float64)
        gen = contourpy.contour_generator(
            z=z, fill_type=contourpy.FillType.OuterOffset, name="serial"
        )
        points, offsets = gen.filled(0.5, 1.5)
        for pts, offs in zip(points, offsets, strict=True):
            raw = [pts[a:b].astype(np.float64) for a, b in zip(offs[:-1], offs[1:], strict=True)]
            rings = []
            for ring in raw:
                # node (i, j) of the padded crop is pixel (r0 + i - 1, c0 + j - 1): its block's
                # centre is ((c0 + j - 1 + 0.5) * d, ...) in level 0
                ring = ring.copy()
                ring[:, 0] = np.clip((ring[:, 0] + c0 - 0.5) * downsample, 0, w0) - offset[0]
                ring[:, 1] = np.clip((ring[:, 1] + r0 - 0.5) * downsample, 0, h0) - offset[1]
                ring = _simplify(ring)
                if len(ring) >= 3:
                    rings.append(ring)
            if rings:
                poly = LabelledPolygon(int(k), classes[k], rings[0], tuple(rings[1:]))
                n, mean = _covered(raw, (r0 - 1, c0 - 1), values)
                out.append(TracedRegion(poly, n, mean))
    return out


def _covered(
    rings: list[np.ndarray], origin: tuple[int, int], values: np.ndarray | None
) -> tuple[int, float | None]:
    """Pixels whose centres lie inside ``rings`` (padded-crop node coordinates: node ``(i, j)``
    is ``labels`` pixel ``origin + (i, j)``) and the mean of ``values`` over them.

    The rings run half-way between pixel centres, so no centre lies on an edge.
    """
    ext = rings[0]
    j0, j1 = int(math.ceil(ext[:, 0].min())), int(math.floor(ext[:, 0].max()))
    i0, i1 = int(math.ceil(ext[:, 1].min())), int(math.floor(ext[:, 1].max()))
    edges = np.vstack([np.hstack([r, np.roll(r, -1, axis=0)]) for r in rings])
    inside = fill_polygon(edges, j0 - 0.5, i0 - 0.5, 1.0, i1 - i0 + 1, j1 - j0 + 1)
    n = int(np.count_nonzero(inside))
    if values is None or not n:
        return n, None
    r, c = origin[0] + i0, origin[1] + j0
    window = values[r : r + inside.shape[0], c : c + inside.shape[1]]
    return n, float(window[inside].astype(np.float64).mean())


def own_class_probability(
    labels: np.ndarray,
    downsample: int,
    image_size: tuple[int, int],
    probability_strips: Iterable[np.ndarray],
    probability_downsample: int,
) -> np.ndarray:
    """float16 map, same shape as ``labels``: the probability of each pixel's own class.

    ``labels`` is a mask level with ``downsample`` (its pixel ``(r, c)`` is level-0 pixel
    ``(y, x) = (r*d + d//2, c*d + d//2)``, clamped); ``probability_strips`` yields the rows of
    the per-class probabilities ``(C, n, cols)`` top to bottom, one value per
    ``probability_downsample`` (``p``) square block (:class:`ProbabilityWriter`'s layout, whose
    value is taken at the block's centre pixel). Pixel ``(r, c)`` reads the value of the block
    holding level-0 ``(y, x)``: block ``(y // p, x // p)``, its nearest sample. Memory: the map
    and one strip.
    """
    w0, h0 = image_size
    ys = sample_index(h0, downsample) // probability_downsample
    xs = sample_index(w0, downsample) // probability_downsample
    if labels.shape != (len(ys), len(xs)):
        raise ValueError(f"labels {labels.shape} are not a level of {w0}x{h0} at {downsample}")
    out = np.zeros(labels.shape, np.float16)
    top = 0
    for strip in probability_strips:
        a, b = np.searchsorted(ys, [top, top + strip.shape[1]])
        if b > a:
            lab = np.minimum(labels[a:b], strip.shape[0] - 1).astype(np.intp)
            out[a:b] = strip[lab, (ys[a:b] - top)[:, None], xs[None, :]]
        top += strip.shape[1]
    need = math.ceil(h0 / probability_downsample)
    if top != need:
        raise ValueError(f"probability strips cover {top} rows, expected {need}")
    return out


def write_overlay(
    path: str | os.PathLike[str],
    thumbnail: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.45,
    background: int | None = 0,
) -> None:
    """PNG of ``thumbnail`` (RGB) with ``labels`` (same size) blended in, and a legend below.

    Class ``background`` is left unpainted. Written atomically.
    """
    from PIL import Image, ImageDraw, ImageFont

    from msn_cli.io.atomic import atomic_write

    lut = color_table(len(classes)).astype(np.float32)
    paint = lut[labels]
    a = np.full(labels.shape, alpha, np.float32)
    if background is not None:
        a[labels == background] = 0.0
    blend = thumbnail.astype(np.float32) * (1 - a[..., None]) + paint * a[..., None]
    img = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    font = ImageFont.load_default()
    row = 18
    legend = Image.new("RGB", (max(img.width, 200), row * len(classes) + 8), "white")
    draw = ImageDraw.Draw(legend)
    for k, name in enumerate(classes):
        y = 4 + k * row
        draw.rectangle([6, y + 2, 20, y + 14], fill=class_color(k), outline=(0, 0, 0))
        note = " (not painted)" if k == background else ""
        draw.text((28, y + 2), f"{k}: {name}{note}", fill=(0, 0, 0), font=font)
    canvas = Image.new("RGB", (max(img.width, legend.width), img.height + legend.height), "white")
    canvas.paste(img, (0, 0))
    canvas.paste(legend, (0, img.height))
    atomic_write(path, lambda fh: canvas.save(fh, format="PNG"))


class ProbabilityWriter:
    """Per-class probabilities ``(C, ceil(H/d), ceil(W/d))`` float16 into a Zarr v3 array.

    Value ``[k, r, c]`` is the probability of class ``k`` at level-0 pixel
    ``(r*d + d//2, c*d + d//2)`` (clamped; the sampling of the mask pyramid), so its argmax
    equals the mask there. Rows are appended in order (:meth:`append`) and buffered to whole
    chunk rows; the array is written under a temporary name and renamed by :meth:`commit`.
    """

    CHUNK = 256

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: tuple[int, int],
        downsample: int,
        classes: Sequence[str],
        attrs: dict | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        w0, h0 = image_size
        self.shape = (len(classes), math.ceil(h0 / downsample), math.ceil(w0 / downsample))
        self.array = zarr.create_array(
            store=str(self.tmp),
            shape=self.shape,
            chunks=(len(classes), self.CHUNK, self.CHUNK),
            dtype="float16",
            fill_value=0.0,
            attributes={
                "classes": list(classes),
                "downsample": downsample,
                "sampling": "value [k, r, c] is at level-0 pixel (r*d + d//2, c*d + d//2)",
                "size": [w0, h0],
                **(attrs or {}),
            },
            zarr_format=3,
        )
        self._pending: list[np.ndarray] = []
        self._n = 0
        self._row = 0

    def append(self, rows: np.ndarray) -> None:
        """The next ``(C, n, cols)`` rows."""
        self._pending.append(rows)
        self._n += rows.shape[1]
        while self._n >= self.CHUNK:
            block = np.concatenate(self._pending, axis=1)
            self._write(block[:, : self.CHUNK])
            rest = block[:, self.CHUNK :]
            self._pending, self._n = [rest], rest.shape[1]

    def _write(self, block: np.ndarray) -> None:
        self.array[:, self._row : self._row + block.shape[1]] = block
        self._row += block.shape[1]

    def commit(self) -> None:
        if self._n:
            self._write(np.concatenate(self._pending, axis=1))
        if self._row != self.shape[1]:
            raise ValueError(f"probabilities: wrote {self._row} rows of {self.shape[1]}")
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)

"""``predict --geojson``: traced class regions as QuPath-native GeoJSON (QuPath 0.4+).

One ``Feature`` per traced polygon (holes kept), as QuPath 0.4+ writes and reads them:

* ``id``: a fresh UUID4 string at the feature's top level (QuPath's object id);
* ``properties.objectType``: ``"annotation"`` (default) or ``"detection"`` (``--geojson-type``:
  lighter in QuPath when there are many objects; detections cannot be edited);
* ``properties.classification``: ``{"name": <class>, "color": [r, g, b]}``, the colours of
  :mod:`msn_cli.palette` (those of ``--overlay``);
* ``properties.measurements``: an object of name -> number (QuPath 0.4's form):

  - :data:`AREA_UM2` (``"Area µm^2"``): the polygon's area (exterior minus holes, shoelace on
    the written coordinates) times the slide's µm/px squared; a slide without a pixel size gets
    :data:`AREA_PX2` (``"Area px^2"``, level-0 pixels squared) instead, never both;
  - :data:`MEAN_PROBABILITY` (``"Mean probability"``): the probability of the polygon's class
    averaged over the polygon's pixels at the traced level (see
    :func:`~msn_cli.io.export.own_class_probability` for how each pixel is sampled); absent
    when no probabilities were available.

Example:
    >>> sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    >>> f = qupath_feature(TracedRegion(LabelledPolygon(1, "benign", sq), 100, 0.75), 0.5)
    >>> f["properties"]["measurements"]
    {'Area µm^2': 25.0, 'Mean probability': 0.75}
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from msn_cli.io.annotations import LabelledPolygon
from msn_cli.io.atomic import atomic_write_text
from msn_cli.io.export import TracedRegion
from msn_cli.palette import class_color

OBJECT_TYPES = ("annotation", "detection")
AREA_UM2 = "Area µm^2"
AREA_PX2 = "Area px^2"
MEAN_PROBABILITY = "Mean probability"


def ring_area(ring: np.ndarray) -> float:
    """Unsigned shoelace area of a ring ``(n, 2)`` (closed or not).

    Example:
        >>> ring_area(np.array([[0, 0], [4, 0], [4, 3], [0, 3]], float))
        12.0
    """
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def polygon_area(poly: LabelledPolygon) -> float:
    """Area of the exterior minus the holes, in the polygon's units squared."""
    return ring_area(poly.exterior) - sum(ring_area(h) for h in poly.holes)


def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = ring.tolist()
    return pts + pts[:1] if pts and pts[0] != pts[-1] else pts


def qupath_feature(
    region: TracedRegion, mpp: float | None, object_type: str = "annotation"
) -> dict[str, Any]:
    """The GeoJSON feature of one region (see the module docstring)."""
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object type {object_type!r} is not one of {', '.join(OBJECT_TYPES)}")
    poly = region.polygon
    area = polygon_area(poly)
    measurements = {AREA_UM2: area * mpp * mpp} if mpp else {AREA_PX2: area}
    if region.mean is not None:
        measurements[MEAN_PROBABILITY] = region.mean
    rings = [_closed(r) for r in (poly.exterior, *poly.holes)]
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {
            "objectType": object_type,
            "classification": {"name": poly.name, "color": list(class_color(poly.label))},
            "measurements": measurements,
        },
    }


def write_qupath_geojson(
    path: str | os.PathLike[str],
    regions: Sequence[TracedRegion],
    mpp: float | None,
    object_type: str = "annotation",
) -> None:
    """A FeatureCollection of :func:`qupath_feature` for every region, written atomically."""
    feats = [qupath_feature(r, mpp, object_type) for r in regions]
    doc = {"type": "FeatureCollection", "features": feats}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))

"""The polygon annotation files, both ways: QuPath GeoJSON and ASAP XML.

Readers (:func:`read_geojson`, :func:`read_asap_xml`) turn a file into
:class:`~msn_cli.io.rasterise.LabelledPolygon` s, matching class names with
:func:`~msn_cli.io.rasterise.match_class`; bad input raises
:class:`~msn_cli.errors.MsnError` naming the file and the problem, and skipped features are
warned about once per reason (:class:`AnnotationWarning`). Writers (:func:`write_geojson`,
:func:`write_asap_xml`) produce the same formats, atomically (tests and synthetic data).
:mod:`msn_cli.io.annotations` chooses among them and label masks; import from there.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.errors import MsnError
from msn_cli.io.atomic import atomic_write_text
from msn_cli.io.rasterise import LabelledPolygon, match_class
from msn_cli.palette import class_color

GEOJSON_SUFFIXES = (".geojson", ".json")
XML_SUFFIXES = (".xml",)
_ASAP_POLYGON_TYPES = {"polygon", "rectangle", "spline"}


class AnnotationWarning(UserWarning):
    """A recoverable annotation problem; the message reads ``"<file>: <problem>"``."""


class _Skips:
    """Collects skipped features, warned once per reason with a count and the first example."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, {}

    def add(self, reason: str, where: str) -> None:
        n, first = self.seen.get(reason, (0, where))
        self.seen[reason] = (n + 1, first)

    def emit(self) -> None:
        for reason, (n, first) in self.seen.items():
            msg = f"{self.path}: skipped {n} annotation(s): {reason} (first: {first})"
            warnings.warn(msg, AnnotationWarning, stacklevel=3)


_NUM = (int, float)  # exact types: JSON's numbers, never its booleans


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The largest level-0 coordinate accepted (slides are at most ~10^6 px a side); beyond it a
#: polygon would overflow the rasteriser's integer rows and vanish.
MAX_COORDINATE = 1e9


def _is_ring(coords: Any) -> bool:
    """A list of ``[x, y, ...]`` points with numeric (not boolean) x and y. The common case,
    JSON lists of ints and floats, is checked by exact type first: it is the parse's hot loop."""
    if not isinstance(coords, list):
        return False
    if all(type(p) is list and len(p) >= 2 and type(p[0]) in _NUM and type(p[1]) in _NUM
           for p in coords):  # fmt: skip
        return True
    return all(
        isinstance(p, (list, tuple)) and len(p) >= 2 and _is_num(p[0]) and _is_num(p[1])
        for p in coords
    )


def _ring(coords: Any, path: Path, where: str) -> np.ndarray:
    if not _is_ring(coords):
        raise MsnError(path, f"{where}: bad coordinates (expected a ring [[x, y], ...])")
    arr = np.array([p[:2] for p in coords], dtype=np.float64).reshape(-1, 2)
    lo, hi = (float(arr.min()), float(arr.max())) if len(arr) else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MsnError(path, f"{where}: non-finite coordinate")
    if max(-lo, hi) >= MAX_COORDINATE:
        far = max(-lo, hi)
        raise MsnError(
            path,
            f"{where}: coordinate {far:g} is far outside any slide (level-0 pixels must be "
            f"within ±{MAX_COORDINATE:g})",
        )
    return arr


def _three_distinct(ring: np.ndarray) -> bool:
    """Whether ``ring`` has at least three distinct points (no sort: 111k polygons parse fast)."""
    if len(ring) < 3:
        return False
    a, b, c = ring[:3].tolist()
    if a != b and b != c and a != c:
        return True
    other = (ring != ring[0]).any(axis=1)
    if not other.any():
        return False
    return bool((other & (ring != ring[other.argmax()]).any(axis=1)).any())


def _polygon(rings: list[np.ndarray], label: int, name: str, skips: _Skips, where: str):
    if not rings or not _three_distinct(rings[0]):
        skips.add("empty or degenerate polygon (fewer than 3 points)", where)
        return None
    holes = []
    for r in rings[1:]:
        if len(r) < 3:
            continue
        probe = r[np.linspace(0, len(r) - 1, min(len(r), 16)).astype(int)]  # bounded memory
        if not _inside_ring(probe, rings[0]).all():  # even-odd filling would ADD its area
            skips.add("hole not inside its polygon (ignored)", where)
            continue
        holes.append(r)
    return LabelledPolygon(label=label, name=name, exterior=rings[0], holes=tuple(holes))


def _inside_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Whether each point lies inside (or on) ``ring``, by even-odd ray casting."""
    x, y = points[:, 0][:, None], points[:, 1][:, None]
    xa, ya = ring[:, 0][None, :], ring[:, 1][None, :]
    xb, yb = np.roll(ring[:, 0], -1)[None, :], np.roll(ring[:, 1], -1)[None, :]
    crosses = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = xa + (y - ya) * (xb - xa) / (yb - ya)
    inside = (crosses & (x < at)).sum(axis=1) % 2 == 1
    # On an edge counts as inside: QuPath holes often touch their shell.
    ex, ey, px, py = xb - xa, yb - ya, x - xa, y - ya
    length2 = ex * ex + ey * ey
    cross, dot = ex * py - ey * px, ex * px + ey * py
    on_edge = (np.abs(cross) <= 1e-9 * length2) & (dot >= 0) & (dot <= length2) & (length2 > 0)
    return inside | on_edge.any(axis=1)


def _geometry_rings(geom: Any, path: Path, where: str, skips: _Skips) -> list[list]:
    """Polygons (each a list of raw rings) of a GeoJSON geometry; skips what is not a polygon."""
    if not geom:
        skips.add("empty geometry", where)
        return []
    if not isinstance(geom, dict):
        raise MsnError(path, f"{where}: geometry is not an object")
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "GeometryCollection":
        return [
            p for g in geom.get("geometries") or [] for p in _geometry_rings(g, path, where, skips)
        ]
    if kind not in ("Polygon", "MultiPolygon"):
        skips.add(f"{kind} geometry (only Polygon and MultiPolygon are labels)", where)
        return []
    if not isinstance(coords, list):
        raise MsnError(path, f"{where}: {kind} without a coordinates list")
    polys = [coords] if kind == "Polygon" else coords
    if not polys or not any(polys):
        skips.add("empty geometry", where)
    return [p for p in polys if p]


def read_geojson(
    path: str | os.PathLike[str], classes: Sequence[str], aliases: Mapping[str, str] | None = None
) -> list[LabelledPolygon]:
    """Polygons of a QuPath GeoJSON export, in file order (later ones paint over earlier)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise MsnError(path, f"cannot read annotations: {e.strerror or e}") from None
    except RecursionError:
        raise MsnError(path, "not valid GeoJSON: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MsnError(path, f"not valid JSON: {e}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise MsnError(
            path,
            "not GeoJSON annotations (expected a FeatureCollection, a Feature "
            "or a list of features)",
        )
    out, skips = [], _Skips(path)
    known: dict[str, int] = {}  # class name -> label, matched once per name
    for i, f in enumerate(features):
        where = f"feature {i}"
        if not isinstance(f, dict):
            raise MsnError(path, f"{where}: not a GeoJSON Feature object")
        props = f.get("properties") or {}
        if isinstance(props, dict) and props.get("name"):
            where += f" ({props['name']!r})"
        polys = _geometry_rings(f.get("geometry"), path, where, skips)
        if not polys:
            continue
        cls = props.get("classification") if isinstance(props, dict) else None
        name = cls.get("name") if isinstance(cls, dict) else cls
        if not isinstance(name, str) or not name.strip():
            skips.add("no classification", where)
            continue
        label = known.get(name)
        if label is None:
            label = known[name] = match_class(name, classes, aliases, path, where)
        for rings in polys:
            if not isinstance(rings, list):
                raise MsnError(path, f"{where}: bad polygon coordinates")
            p = _polygon(
                [_ring(r, path, where) for r in rings], label, classes[label], skips, where
            )
            if p is not None:
                out.append(p)
    skips.emit()
    return out


def _number(text: str | None, path: Path, where: str, what: str) -> float:
    if text is None:
        raise MsnError(path, f"{where}: {what} is missing")
    try:
        v = float(text.strip().replace(",", ".") if "." not in text else text)
    except ValueError:
        raise MsnError(path, f"{where}: {what}={text!r} is not a number") from None
    if not np.isfinite(v):
        raise MsnError(path, f"{where}: {what}={text!r} is not finite")
    if abs(v) >= MAX_COORDINATE:
        raise MsnError(
            path, f"{where}: {what}={v:g} is far outside any slide (within ±{MAX_COORDINATE:g})"
        )
    return v


def read_asap_xml(
    path: str | os.PathLike[str], classes: Sequence[str], aliases: Mapping[str, str] | None = None
) -> list[LabelledPolygon]:
    """Polygons of an ASAP XML file (BACH), in file order; class from ``PartOfGroup``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MsnError(path, f"cannot read annotations: {e.strerror or e}") from None
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:  # hardened: no DTD, entities or external references, whatever the encoding
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise MsnError(path, "XML with DOCTYPE or ENTITY declarations is refused") from None
    except ET.ParseError as e:
        raise MsnError(path, f"not valid XML: {e}") from None
    if root.tag != "ASAP_Annotations":
        raise MsnError(
            path,
            f"not an ASAP annotation file (root element <{root.tag}>, expected <ASAP_Annotations>)",
        )
    out, skips = [], _Skips(path)
    for i, a in enumerate(root.findall("./Annotations/Annotation")):
        where = f"annotation {a.get('Name', f'#{i}')!r}"
        kind, group = a.get("Type", "Polygon"), (a.get("PartOfGroup") or "").strip()
        if kind.casefold() not in _ASAP_POLYGON_TYPES:
            skips.add(f"{kind} annotation (only Polygon, Rectangle, Spline are labels)", where)
            continue
        pts = []
        for k, c in enumerate(a.findall("./Coordinates/Coordinate")):
            order = c.get("Order")
            try:
                key = int(order) if order is not None else k
            except ValueError:
                raise MsnError(
                    path, f"{where}: coordinate Order={order!r} is not an integer"
                ) from None
            pw = f"{where} coordinate {order if order is not None else k}"
            pts.append(
                (key, _number(c.get("X"), path, pw, "X"), _number(c.get("Y"), path, pw, "Y"))
            )
        if not group or group.casefold() == "none":
            skips.add("no PartOfGroup class", where)
            continue
        label = match_class(group, classes, aliases, path, where)
        pts.sort(key=lambda p: p[0])
        ring = np.array([p[1:] for p in pts], dtype=np.float64).reshape(-1, 2)
        p = _polygon([ring], label, classes[label], skips, where)
        if p is not None:
            out.append(p)
    skips.emit()
    return out


def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = ring.tolist()
    return pts + pts[:1] if pts and pts[0] != pts[-1] else pts


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def write_geojson(
    path: str | os.PathLike[str],
    polygons: Sequence[LabelledPolygon],
    colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> None:
    """Write polygons as a QuPath-style FeatureCollection (one Polygon feature each), atomically.

    ``colors`` maps class names to RGB; by default a fixed palette indexed by class label.
    """
    feats = []
    for p in polygons:
        rgb = (colors or {}).get(p.name, class_color(p.label))
        feats.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_closed(r) for r in (p.exterior,
                                                                                 *p.holes)]},
            "properties": {"objectType": "annotation",
                           "classification": {"name": p.name, "color": list(rgb)}},
        })  # fmt: skip
    doc = {"type": "FeatureCollection", "features": feats}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))


def write_asap_xml(
    path: str | os.PathLike[str],
    polygons: Sequence[LabelledPolygon],
    colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> None:
    """Write polygons as ASAP XML (group = class name), atomically. ASAP has no holes.

    With ``colors``, every class in it gets a group (in its order), present or not.
    """
    root = ET.Element("ASAP_Annotations")
    annots = ET.SubElement(root, "Annotations")
    for i, p in enumerate(polygons):
        if p.holes:
            raise ValueError(f"{path}: ASAP XML cannot hold polygon holes (polygon {i})")
        rgb = (colors or {}).get(p.name, class_color(p.label))
        a = ET.SubElement(
            annots,
            "Annotation",
            Name=f"Annotation {i}",
            Type="Polygon",
            PartOfGroup=p.name,
            Color=_hex(rgb),
        )
        coords = ET.SubElement(a, "Coordinates")
        for k, (x, y) in enumerate(p.exterior.tolist()):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=repr(x), Y=repr(y))
    groups = ET.SubElement(root, "AnnotationGroups")
    names = list(colors) if colors else list(dict.fromkeys(p.name for p in polygons))
    for name in names:
        rgb = (colors or {}).get(name, (100, 254, 46))
        g = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=_hex(rgb))
        ET.SubElement(g, "Attributes")
    ET.indent(root)
    atomic_write_text(
        path, '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    )

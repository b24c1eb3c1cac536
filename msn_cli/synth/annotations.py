"""Writers for the synthetic slides' annotations: QuPath GeoJSON and ASAP XML.

Coordinates are level-0 pixels. QuPath form: a FeatureCollection whose features carry
``properties.classification.name`` / ``color`` ([r, g, b]) and a Polygon (one part) or
MultiPolygon (several parts) geometry with closed rings. ASAP form: one ``Annotation`` of
``Type="Polygon"`` per part, ``PartOfGroup`` = class name, and one ``Group`` per class.
Both files are written under a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msn_cli.synth.layout import CLASS_COLORS, CLASS_NAMES, Region


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def _ring(poly: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in poly]
    return [*pts, pts[0]]


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_geojson(path: str | os.PathLike[str], regions: Sequence[Region]) -> Path:
    """QuPath-style GeoJSON FeatureCollection, one feature per region (ids are deterministic)."""
    features = []
    for i, region in enumerate(regions):
        rings = [[_ring(p)] for p in region.parts]
        geometry = (
            {"type": "Polygon", "coordinates": rings[0]}
            if len(rings) == 1
            else {"type": "MultiPolygon", "coordinates": rings}
        )
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"msn-synth/{i}/{rings[0][0][0]}")),
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "classification": {
                        "name": region.name,
                        "color": list(CLASS_COLORS[region.label]),
                    },
                },
            }
        )
    doc = {"type": "FeatureCollection", "features": features}
    return _atomic_write(Path(path), json.dumps(doc, separators=(",", ":")))


def write_asap_xml(path: str | os.PathLike[str], regions: Sequence[Region]) -> Path:
    """ASAP ``<ASAP_Annotations>`` XML, one Polygon annotation per region part."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    k = 0
    for region in regions:
        for poly in region.parts:
            ann = ET.SubElement(
                annotations,
                "Annotation",
                Name=f"Annotation {k}",
                Type="Polygon",
                PartOfGroup=region.name,
                Color=_hex(CLASS_COLORS[region.label]),
            )
            coords = ET.SubElement(ann, "Coordinates")
            for order, (x, y) in enumerate(poly):
                ET.SubElement(
                    coords,
                    "Coordinate",
                    Order=str(order),
                    X=repr(round(float(x), 2)),
                    Y=repr(round(float(y), 2)),
                )
            k += 1
    groups = ET.SubElement(root, "AnnotationGroups")
    for name, color in zip(CLASS_NAMES, CLASS_COLORS, strict=True):
        group = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=_hex(color))
        ET.SubElement(group, "Attributes")
    ET.indent(root, space=" ")
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return _atomic_write(Path(path), '<?xml version="1.0"?>\n' + text + "\n")

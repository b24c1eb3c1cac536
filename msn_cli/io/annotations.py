"""Annotations to label arrays: the one place that reads annotation files and label masks.

Entry points: :func:`find_annotations` (the labels next to a slide), :func:`open_labels` (any
supported file to a :class:`LabelSource`), :func:`read_annotations` (polygons only), and the
writers :func:`write_geojson` / :func:`write_asap_xml` used by tests and the synthetic data.
The polygon file formats are read and written in :mod:`msn_cli.io.annotation_formats`, label
masks in :mod:`msn_cli.io.labelmask`, polygons rasterised in :mod:`msn_cli.io.rasterise`;
this module chooses among them and re-exports their public names.

Formats: QuPath GeoJSON (``.geojson``/``.json``: a FeatureCollection, a list of features or one
Feature; Polygon and MultiPolygon with holes; class from ``properties.classification.name`` or a
plain-string ``properties.classification``), ASAP XML (``.xml``, as BACH ships; class from
``PartOfGroup``), and label masks ``<stem>_mask.png|tif|tiff`` (see :mod:`.labelmask`).
Coordinates are level-0 pixels, x right, y down.

Class names match ``classes`` case-insensitively and whitespace-tolerantly, after an optional alias
table (default :data:`BACH_ALIASES`; pass ``{}`` for none). Bad input raises
:class:`~msn_cli.errors.MsnError` naming the file and the problem. Recoverable problems (skipped
features: unknown geometry type, empty or unclassified; polygons partly outside the image) are
emitted as :class:`AnnotationWarning` through :func:`warnings.warn`, one per kind of problem, each
``"<file>: <problem>"``; the CLI collects them with ``warnings.catch_warnings(record=True)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.annotation_formats import (
    GEOJSON_SUFFIXES,
    XML_SUFFIXES,
    AnnotationWarning,
    read_asap_xml,
    read_geojson,
    write_asap_xml,
    write_geojson,
)
from msn_cli.io.labelmask import (
    LOSSY_SUFFIXES,
    MASK_SUFFIXES,
    MAX_MASK_PIXELS,
    MaskLabels,
    parse_mask_values,
)
from msn_cli.io.rasterise import (
    BACH_ALIASES,
    BACH_CLASSES,
    LabelledPolygon,
    LabelSource,
    PolygonLabels,
    entirely_outside,
    match_class,
    out_of_bounds,
)
from msn_cli.vocab import IGNORE

__all__ = [
    "BACH_ALIASES", "BACH_CLASSES", "IGNORE", "MAX_MASK_PIXELS", "AnnotationWarning",
    "LabelSource", "LabelledPolygon", "MaskLabels", "PolygonLabels", "annotations_beside",
    "find_annotations", "match_class", "open_labels", "out_of_bounds", "parse_mask_values",
    "read_annotations", "read_asap_xml", "read_geojson", "write_asap_xml", "write_geojson",
]  # fmt: skip


def read_annotations(
    path: str | os.PathLike[str], classes: Sequence[str], aliases: Mapping[str, str] | None = None
) -> list[LabelledPolygon]:
    """Polygons of a ``.geojson``/``.json`` (QuPath) or ``.xml`` (ASAP) file, by extension."""
    suffix = Path(path).suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        try:
            return read_geojson(path, classes, aliases)
        except RecursionError:  # e.g. GeometryCollections nested thousands deep
            raise MsnError(path, "not valid GeoJSON: nested too deeply") from None
    if suffix in XML_SUFFIXES:
        return read_asap_xml(path, classes, aliases)
    raise MsnError(
        path,
        f"unsupported annotation type {suffix!r} (expected .geojson, .json or "
        f".xml; label masks: {', '.join(MASK_SUFFIXES)})",
    )


def find_annotations(slide_path: str | os.PathLike[str]) -> Path | None:
    """The labels next to a slide: ``<stem>.geojson``, ``<stem>.xml``, ``<stem>_mask.png|tif|tiff``.

    Tried in that order, first with the full stem (``a.ome`` for ``a.ome.tiff``), then with the
    part of the name before the first dot (``a``). Returns None when none exists.
    """
    found = annotations_beside(slide_path)
    return found[0] if found else None


def annotations_beside(slide_path: str | os.PathLike[str]) -> list[Path]:
    """Every existing label file :func:`find_annotations` would consider, in its order."""
    p = Path(slide_path)
    stems = dict.fromkeys([p.stem, p.name.split(".")[0]])
    found = []
    for stem in stems:
        for name in (f"{stem}.geojson", f"{stem}.xml", *(f"{stem}_mask{s}" for s in MASK_SUFFIXES)):
            cand = p.with_name(name)
            if cand != p and cand.is_file() and cand not in found:
                found.append(cand)
    return found


def open_labels(
    path: str | os.PathLike[str],
    classes: Sequence[str],
    image_size: tuple[int, int],
    background: int = 0,
    mask_values: Mapping[int, int] | str | None = None,
    aliases: Mapping[str, str] | None = None,
) -> LabelSource:
    """A :class:`LabelSource` for an annotation file or label mask of a slide of ``image_size``.

    ``image_size`` is level-0 ``(width, height)``. ``background`` (0, or 255 = ignore) labels
    unannotated pixels of polygon files; masks label every pixel themselves. ``mask_values`` is a
    ``{raw: class}`` dict or ``--mask-values`` text. Warns (:class:`AnnotationWarning`) about
    skipped features, an empty file and polygons extending outside the image; raises MsnError when
    every polygon lies wholly outside it.
    """
    if not 1 <= len(classes) <= 255:
        raise MsnUsageError(None, f"between 1 and 255 classes are supported, got {len(classes)}")
    suffix = Path(path).suffix.lower()
    if suffix in MASK_SUFFIXES or suffix in LOSSY_SUFFIXES:
        if isinstance(mask_values, str):
            mask_values = parse_mask_values(mask_values, classes, aliases)
        values = None if mask_values is None else dict(mask_values)
        return MaskLabels(path, image_size, values, num_classes=len(classes))
    if not Path(path).is_file() and suffix in GEOJSON_SUFFIXES + XML_SUFFIXES:
        raise MsnError(path, "annotation file not found")
    polygons = read_annotations(path, classes, aliases)
    w, h = image_size
    n, outside = len(polygons), entirely_outside(polygons, image_size)
    if n == 0:
        warnings.warn(
            f"{path}: no usable annotations; every pixel gets the background label",
            AnnotationWarning,
            stacklevel=2,
        )
    elif outside == n:
        raise MsnError(
            path,
            f"all {n} annotations lie outside the {w}x{h} image (wrong slide, or "
            "coordinates not in level-0 pixels?)",
        )
    elif k := out_of_bounds(polygons, image_size):
        warnings.warn(
            f"{path}: {k} of {n} annotations extend outside the {w}x{h} image; the "
            "parts outside are ignored",
            AnnotationWarning,
            stacklevel=2,
        )
    return PolygonLabels(polygons, image_size, background)

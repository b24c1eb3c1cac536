"""Label masks as pyramidal OME-TIFFs that QuPath and Bio-Formats open (``--format ome-tiff``).

Layout (checked with tifffile in ``tests/test_qupath_outputs.py``):

* the levels of :mod:`msn_cli.io.maskwriter` (downsamples 1, 4, 16, ... until one tile holds
  the coarsest; reduced levels *sampled* at each block's centre pixel, never averaged), 256 x 256
  tiles, Adobe deflate, one uint8 sample per pixel (class indices);
* level 0 is the only IFD of the main chain; the reduced levels are its SubIFDs
  (NewSubfileType 1), as the OME-TIFF specification's *sub-resolutions* (Bio-Formats 6+);
* level 0's ImageDescription is OME-XML (schema 2016-06) with one Image:

  - ``Pixels``: ``Type="uint8"``, ``SizeC=1``; ``PhysicalSizeX/Y`` in µm
    (``PhysicalSizeXUnit="µm"``) when the slide's microns per pixel are known, else absent;
  - ``Channel Name``: the class of each index, e.g. ``classes: 0=normal, 1=benign``;
  - a ``MapAnnotation`` (namespace :data:`CLASSES_NAMESPACE`) mapping each index (key) to its
    class name (value): Bio-Formats keeps structured annotations in its OME metadata;
  - the Image ``Description``: ``msn-mask`` followed by the JSON that the generic TIFF keeps in
    its ImageDescription (classes, source, job key, ``"container": "ome-tiff"``), so that
    ``predict`` recognises a finished mask and ``evaluate`` reads the class names;

* the TIFF resolution tags as in the generic TIFF (centimetres, scaled by each downsample).

Level 0 is never held in memory: the level-0 row blocks are streamed through the same helpers
as the generic TIFF (:func:`~msn_cli.io.maskwriter.write_levels`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.io.maskwriter import DESCRIPTION_PREFIX, TILE, write_levels

CLASSES_NAMESPACE = "msn-cli/classes"
OME_SUFFIXES = (".ome.tif", ".ome.tiff")


def is_ome_name(path: str | os.PathLike[str]) -> bool:
    """Whether a file name says OME-TIFF (``.ome.tif`` / ``.ome.tiff``, any case).

    Example:
        >>> is_ome_name("mask.OME.tif"), is_ome_name("mask.tif")
        (True, False)
    """
    return Path(path).name.lower().endswith(OME_SUFFIXES)


def ome_metadata(
    classes: Sequence[str], mpp: float | None, description: dict[str, Any], name: str
) -> dict[str, Any]:
    """The ``metadata`` tifffile turns into the OME-XML described in the module docstring."""
    meta: dict[str, Any] = {
        "axes": "YX",
        "Name": name,
        "Creator": "msn predict",
        "Description": DESCRIPTION_PREFIX + json.dumps(description, sort_keys=True),
        "Channel": {"Name": ["classes: " + ", ".join(f"{k}={c}" for k, c in enumerate(classes))]},
        "MapAnnotation": {
            "Namespace": CLASSES_NAMESPACE,
            "Value": {str(k): c for k, c in enumerate(classes)},
        },
    }
    if mpp:
        meta.update(
            PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm"
        )
    return meta


def write_mask_ome_tiff(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    mpp: float | None,
    classes: Sequence[str],
    description: dict[str, Any] | None = None,
    name: str = "mask",
    tile: int = TILE,
    workers: int | None = None,
) -> list[int]:
    """Write the pyramidal mask as an OME-TIFF to ``path`` (the caller renames it into place).

    ``blocks()`` yields uint8 level-0 row blocks ``(rows, width)`` top to bottom; it is called
    once per level. Returns the level downsamples.
    """
    import tifffile

    desc = {**(description or {}), "container": "ome-tiff"}
    first = {"metadata": ome_metadata(classes, mpp, desc, name)}
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31, ome=True) as tif:
        return write_levels(
            tif, width, height, blocks, mpp=mpp, first=first, tile=tile, workers=workers,
            in_subifds=True,
        )  # fmt: skip


def description_from_ome(xml: str) -> str | None:
    """The msn text (``msn-mask {...}``) of the first OME Image's Description, or None."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except Exception:  # malformed or hostile XML: not an msn mask
        return None
    for image in root:
        if image.tag.rpartition("}")[2] != "Image":
            continue
        for child in image:
            if child.tag.rpartition("}")[2] == "Description":
                return child.text
        return None
    return None


def classes_from_ome(xml: str) -> dict[int, str]:
    """Index -> class name from the :data:`CLASSES_NAMESPACE` MapAnnotation ({} if absent)."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except Exception:
        return {}
    for el in root.iter():
        tag = el.tag.rpartition("}")[2]
        if tag == "MapAnnotation" and el.get("Namespace") == CLASSES_NAMESPACE:
            pairs = [m for m in el.iter() if m.tag.rpartition("}")[2] == "M"]
            return {int(m.get("K")): m.text or "" for m in pairs if (m.get("K") or "").isdigit()}
    return {}

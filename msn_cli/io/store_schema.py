"""The patch store's schema: every attribute it holds, as typed records, and its names.

:mod:`msn_cli.io.store` reads and writes the store; the records here say what its attributes
mean and how they are spelt on disk. Each record has ``to_attrs`` (the JSON-ready dictionary,
keys in the order they are stored) and ``from_attrs`` (its inverse):

* :class:`StoreSpec`: the root's ``msn_store`` attributes, what every slide shares;
* :class:`SlideAttrs` (with its :class:`TileParams`): what ``tile`` records about a slide in
  its group's ``msn_slide`` attributes;
* :class:`SlideLayout` (with one :class:`BranchImage` per branch): how the slide's images lie
  in its group, stored under ``msn_slide.layout``.

The store adds ``complete``, ``n_patches`` and ``label_pixels`` to ``msn_slide`` as it writes.

Example:
    >>> params = TileParams((16.0, 4.0, 1.0), 256, None, 1.0, 0.1, "normal", None, None, None,
    ...                     "jpeg:95")
    >>> attrs = SlideAttrs("/d/a.svs", "f00d", "train", (4096, 3072), 0.25, "aperio",
    ...                    (1.0, 4.0, 16.0), params)
    >>> SlideAttrs.from_attrs(attrs.to_attrs()) == attrs
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.vocab import BRANCHES, IGNORE

SCHEMA_VERSION = 2
SPLITS = ("train", "sub-train", "test")
#: The patch table: one row per patch triplet.
TABLE = ("centers", "tissue", "grid", "origins")
#: Inner chunks per shard side: a shard file holds 8 x 8 chunks (X1: 8 x 8 grid cells).
SHARD_CHUNKS = 8
#: The largest patch side msn accepts (``tile --patch-size``, model.json): a batch of 8 such
#: triplets is already ~1.2 GB of float32.
MAX_PATCH_SIZE = 4096
#: The attribute keys of the root group and of each slide group.
ROOT_KEY = "msn_store"
SLIDE_KEY = "msn_slide"


@dataclass(frozen=True)
class StoreSpec:
    """What every slide of a store shares; a store refuses slides made otherwise."""

    patch_size: int
    magnifications: tuple[float, float, float]
    classes: tuple[str, ...]
    ignore_label: int = IGNORE
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "patch_size": self.patch_size,
            "magnifications": list(self.magnifications),
            "classes": list(self.classes),
            "ignore_label": self.ignore_label,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSpec:
        return cls(
            int(attrs["patch_size"]),
            tuple(float(m) for m in attrs["magnifications"]),  # type: ignore[arg-type]
            tuple(attrs["classes"]),
            int(attrs.get("ignore_label", IGNORE)),
            int(attrs["schema_version"]),
        )

    def mismatch(self, other: StoreSpec) -> str | None:
        """Why ``other`` cannot share a store with this spec, or None."""
        for name in ("schema_version", "patch_size", "magnifications", "classes"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                return f"store has {name} {_fmt(a)}, not {_fmt(b)}"
        return None


@dataclass(frozen=True)
class TileParams:
    """The ``tile`` settings a slide was tiled with (``msn_slide.params``): a slide whose
    recorded parameters equal a new run's, from the same source, is not tiled again.

    ``labels`` is the resolved path of the annotation file or mask (None: none was found) and
    ``labels_fingerprint`` its content fingerprint; ``codec`` the images' codec as asked.
    """

    levels: tuple[float, ...]
    patch_size: int
    mpp: float | None
    base_downsample: float
    min_tissue: float
    unannotated: str
    mask_values: str | None
    labels: str | None
    labels_fingerprint: str | None
    codec: str

    def to_attrs(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "patch_size": self.patch_size,
            "mpp": self.mpp,
            "base_downsample": self.base_downsample,
            "min_tissue": self.min_tissue,
            "unannotated": self.unannotated,
            "mask_values": self.mask_values,
            "labels": self.labels,
            "labels_fingerprint": self.labels_fingerprint,
            "codec": self.codec,
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> TileParams:
        return cls(
            tuple(float(m) for m in a["levels"]), int(a["patch_size"]), a.get("mpp"),
            float(a["base_downsample"]), float(a["min_tissue"]), str(a["unannotated"]),
            a.get("mask_values"), a.get("labels"), a.get("labels_fingerprint"), str(a["codec"]),
        )  # fmt: skip


@dataclass(frozen=True)
class SlideAttrs:
    """What ``tile`` records about one slide (``msn_slide``, before the store's own keys): the
    source's resolved path and content fingerprint, the split, the level-0 ``size`` (width,
    height), the scanner's mpp (None: unknown) and vendor, the level-0 downsample of each
    branch (X1, X2, X3) and the tiling parameters."""

    source: str
    fingerprint: str
    split: str
    size: tuple[int, int]
    mpp: float | None
    vendor: str
    downsamples: tuple[float, ...]
    params: TileParams

    def to_attrs(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "size": list(self.size),
            "mpp": self.mpp,
            "vendor": self.vendor,
            "downsamples": list(self.downsamples),
            "params": self.params.to_attrs(),
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> SlideAttrs:
        w, h = a["size"]
        return cls(
            str(a["source"]), str(a["fingerprint"]), str(a["split"]), (int(w), int(h)),
            a.get("mpp"), str(a.get("vendor", "")), tuple(float(d) for d in a["downsamples"]),
            TileParams.from_attrs(a["params"]),
        )  # fmt: skip


@dataclass(frozen=True)
class BranchImage:
    """One branch's image of a slide: pixel (0, 0) covers level 0 from ``origin`` on, each pixel
    ``downsample`` level-0 pixels wide; ``shape`` is (height, width); ``codec`` its chunks'
    compression (e.g. ``jpeg:90``, ``zstd:3``)."""

    origin: tuple[float, float]
    downsample: float
    shape: tuple[int, int]
    codec: str

    def to_attrs(self) -> dict[str, Any]:
        o, s = list(self.origin), list(self.shape)
        return {"origin": o, "downsample": self.downsample, "shape": s, "codec": self.codec}

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> BranchImage:
        o, s, ds = a["origin"], a["shape"], float(a["downsample"])
        return cls((float(o[0]), float(o[1])), ds, (int(s[0]), int(s[1])), str(a["codec"]))


@dataclass(frozen=True)
class SlideLayout:
    """How one slide's images lie in its group: the three branch images, the patch size and the
    chunk side (pixels).

    Example:
        >>> img = BranchImage((0.0, 0.0), 1.0, (600, 900), "zstd:3")
        >>> lay = SlideLayout((img, img, img), patch_size=64, chunk=64)
        >>> lay.shard_side, lay.shard_grid(0)
        (512, (2, 2))
    """

    images: tuple[BranchImage, BranchImage, BranchImage]
    patch_size: int
    chunk: int

    @property
    def shard_side(self) -> int:
        return self.chunk * SHARD_CHUNKS

    def shard_grid(self, branch: int) -> tuple[int, int]:
        """Shards along (rows, columns) of branch ``branch``'s image."""
        h, w = self.images[branch].shape
        s = self.shard_side
        return -(-h // s), -(-w // s)

    def needed_chunks(self, branch: int, origins: np.ndarray) -> np.ndarray:
        """Boolean (rows, cols) grid of the chunks that views at ``origins`` (N, 2: x, y) touch."""
        h, w = self.images[branch].shape
        c, p = self.chunk, self.patch_size
        need = np.zeros((-(-h // c), -(-w // c)), dtype=bool)
        for x, y in origins:
            need[y // c : (y + p - 1) // c + 1, x // c : (x + p - 1) // c + 1] = True
        return need

    def to_attrs(self) -> dict[str, Any]:
        return {
            "images": {k: im.to_attrs() for k, im in zip(BRANCHES, self.images, strict=True)},
            "patch_size": self.patch_size,
            "chunk": self.chunk,
            "shard_chunks": SHARD_CHUNKS,
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> SlideLayout:
        images = tuple(BranchImage.from_attrs(a["images"][k]) for k in BRANCHES)
        return cls(images, int(a["patch_size"]), int(a["chunk"]))  # type: ignore[arg-type]


def slide_stem(path: str | Path) -> str:
    """A slide's file name without its extension (both of ``.ome.tif``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def slide_name(path: str | Path) -> str:
    """The group name of a slide: its file name without the extension(s), made safe and
    reversible. Letters, digits, ``.``, ``-`` and inner ``_`` are kept; any other character,
    and a leading ``_`` (Zarr reserves ``__`` names, msn's temporaries start with it), becomes
    ``~`` and its UTF-8 bytes in hex, so ``日本`` and ``中国`` stay apart.

    Example:
        >>> slide_name("A 01.svs"), slide_name("__old__A.tif"), slide_name("x.ome.tiff")
        ('A~2001', '~5F~5Fold__A', 'x')
    """
    name = slide_stem(path)
    stripped = name.lstrip("_")
    head = "~5F" * (len(name) - len(stripped))
    body = "".join(
        ch if re.fullmatch(r"[A-Za-z0-9._-]", ch) else "".join(f"~{b:02X}" for b in ch.encode())
        for ch in stripped
    )
    return head + body or "slide"


def _fmt(v) -> str:
    if isinstance(v, tuple | list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)

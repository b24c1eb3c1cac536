"""The patch store (docs: README "The patch store"): the only module that knows its layout.

A Zarr v3 group. Root attributes ``msn_store`` hold the schema version, patch size, the three
relative magnifications, the class names and the ignore label. One child group per slide,
written by exactly one process. Schema 2 stores each branch's scale **once**, as an image at
that exact scale covering every kept patch's field of view, and triplets are views cut from
those images::

    <slide>/
      x1 x2 x3   uint8   (H_b, W_b, 3)  the slide at X1's, X2's, X3's scale (zeros outside it)
      y1 y2 y3   uint8   (H_b, W_b)     class indices at the same pixels, 255 = ignore
      centers    float64 (N, 2)         level-0 x, y of each patch triplet's shared centre
      tissue     float32 (N,)           tissue fraction of the X1 patch
      grid       int32   (N, 2)         column, row of the patch in the slide's X1 grid
      origins    int32   (N, 3, 2)      x, y of the patch's view in x1, x2, x3 (their pixels)

Patch ``i`` of branch ``b`` is ``x{b}[y:y+P, x:x+P]`` with ``(x, y) = origins[i, b-1]``. The
grid is laid so that every origin is a whole pixel of every branch (see
:class:`~msn_cli.io.patches.PatchGeometry`), so a view equals the triplet cut from the slide.
Images are chunked P x P (X1's chunks are its grid cells), 8 x 8 chunks per shard file; only
chunks under some patch's field of view are written (the rest read as the fill value: 0, or
255 for labels). Image chunks are JPEG (lossy default) or zstd / JPEG-XL (``--lossless``),
labels zstd (:mod:`msn_cli.io.codecs`). Slide attributes (``msn_slide``) name the source, its
fingerprint, the split, level-0 size, mpp, each branch's level-0 downsample, the patch count,
the tiling parameters, the ``layout`` (each image's level-0 origin, downsample and shape, the
chunking and the codec) and ``complete``, which is set last: readers only ever see complete
slides.

Example:
    >>> spec = StoreSpec(256, (16.0, 4.0, 1.0), ("normal", "benign", "in situ", "invasive"))
    >>> store = PatchStore.create(tmp_path / "store.zarr", spec)  # doctest: +SKIP
    >>> [s.name for s in store.slides("train")]  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.errors import MsnError
from msn_cli.io.codecs import LABEL_CODEC, ChunkCodec

SCHEMA_VERSION = 2
IGNORE_LABEL = 255
SPLITS = ("train", "sub-train", "test")
IMAGES = ("x1", "x2", "x3")
LABELS = ("y1", "y2", "y3")
TABLE = ("centers", "tissue", "grid", "origins")
#: Inner chunks per shard side: a shard file holds 8 x 8 chunks (X1: 8 x 8 grid cells).
SHARD_CHUNKS = 8
_ROOT_KEY = "msn_store"
_PARTIAL = "__partial__"
_OLD = "__old__"
#: A group of lock files, one per slide being tiled (:meth:`PatchStore.slide_lock`).
_LOCKS = "__locks__"
_TEMP_PREFIXES = (_PARTIAL, _OLD, _LOCKS)
_EMPTY_GROUP = {"attributes": {}, "zarr_format": 3, "node_type": "group"}
_SLIDE_KEY = "msn_slide"
#: The largest patch side msn accepts (``tile --patch-size``, model.json): a batch of 8 such
#: triplets is already ~1.2 GB of float32.
MAX_PATCH_SIZE = 4096


@dataclass(frozen=True)
class StoreSpec:
    """What every slide of a store shares; a store refuses slides made otherwise."""

    patch_size: int
    magnifications: tuple[float, float, float]
    classes: tuple[str, ...]
    ignore_label: int = IGNORE_LABEL
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
            int(attrs.get("ignore_label", IGNORE_LABEL)),
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
            "images": {k: im.to_attrs() for k, im in zip(IMAGES, self.images, strict=True)},
            "patch_size": self.patch_size,
            "chunk": self.chunk,
            "shard_chunks": SHARD_CHUNKS,
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> SlideLayout:
        images = tuple(BranchImage.from_attrs(a["images"][k]) for k in IMAGES)
        return cls(images, int(a["patch_size"]), int(a["chunk"]))  # type: ignore[arg-type]


@dataclass
class SlideRecord:
    """One slide group: typed read-only views of its attributes, and its patches."""

    name: str
    attrs: dict[str, Any]
    group: Any = field(repr=False)
    _table: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    source = property(lambda self: self.attrs["source"])
    fingerprint = property(lambda self: self.attrs["fingerprint"])
    split = property(lambda self: self.attrs["split"])
    size = property(lambda self: tuple(self.attrs["size"]))
    mpp = property(lambda self: self.attrs.get("mpp"))
    downsamples = property(lambda self: tuple(self.attrs["downsamples"]))
    params = property(lambda self: self.attrs.get("params", {}))
    complete = property(lambda self: bool(self.attrs.get("complete")))
    #: Pixel count of each label value of y1 under the X1 patches (index 255: ignore).
    label_pixels = property(lambda self: list(self.attrs.get("label_pixels", [])))

    @property
    def n_patches(self) -> int:
        return int(self.attrs.get("n_patches", 0))

    @property
    def layout(self) -> SlideLayout:
        return SlideLayout.from_attrs(self.attrs["layout"])

    def array(self, name: str):
        return self.group[name]

    def read(self, name: str, index) -> np.ndarray:
        """Patches ``index`` (an int, a slice or an index array) of one field.

        Images and labels (``x1`` ... ``y3``) are views cut from the branch images: (P, P, 3)
        or (P, P) per patch. Neighbouring patches of one grid row are read as one region.
        """
        if name in IMAGES or name in LABELS:
            return self._views(name, index)
        arr = self.group[name]
        if not isinstance(index, np.ndarray):
            return arr[index]
        if index.size == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        runs = np.split(index, breaks)
        return np.concatenate([arr[int(r[0]) : int(r[-1]) + 1] for r in runs])

    def table(self, name: str) -> np.ndarray:
        """A whole patch-table array, read once per record."""
        if name not in self._table:
            self._table[name] = np.asarray(self.group[name][:])
        return self._table[name]

    def _views(self, name: str, index) -> np.ndarray:
        from msn_cli.io.views import read_views

        single = isinstance(index, int | np.integer)
        idx = np.atleast_1d(np.arange(self.n_patches)[index])
        b = (IMAGES if name in IMAGES else LABELS).index(name)
        lay = self.layout
        origins = self.table("origins")[idx, b].astype(np.int64)
        out = read_views(
            self.group[name], (*self.cache_key, name), lay.chunk, lay.patch_size, origins,
            self.table("grid")[idx],
        )  # fmt: skip
        return out[0] if single else out

    @cached_property
    def cache_key(self) -> tuple:
        """Names this slide's content in the decoded-chunk cache (:mod:`msn_cli.io.views`)."""
        import json

        where = str(getattr(self.group.store, "root", self.group.store))
        return (where, self.group.path, json.dumps(self.attrs, sort_keys=True))


class PatchStore:
    """An open patch store. Create with :meth:`create` (idempotent) or :meth:`open`."""

    def __init__(self, url: str, root, spec: StoreSpec) -> None:
        self.url = url
        self.root = root
        self.spec = spec

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str | Path, spec: StoreSpec) -> PatchStore:
        """Open the store at ``url``, creating it if absent; refuse an incompatible one.

        Safe when several processes create the same store at once: the root metadata is
        identical bytes whoever writes it.
        """
        import zarr

        import msn_cli.io.zarr_codec  # noqa: F401 - registers msn.image with zarr

        url = str(url)
        for attempt in range(3):
            # Another process creating the store at the same moment makes zarr's
            # check-then-create fail ("A group exists") or see its temporary files: retry.
            try:
                with _quiet_temporaries():
                    root = zarr.open_group(_location(url), mode="a")
                break
            except Exception as exc:
                if attempt == 2:
                    raise MsnError(url, f"cannot open or create the store: {exc}") from exc
        attrs = dict(root.attrs)
        if _ROOT_KEY not in attrs:
            with _quiet_temporaries():
                others = any(True for _ in root.group_keys())
            if others:
                raise MsnError(url, "not an msn patch store (no msn_store attributes)")
            root.attrs.update({_ROOT_KEY: spec.to_attrs()})
            return cls(url, root, spec)
        existing = _spec_or_fail(url, attrs)
        why = existing.mismatch(spec)
        if why:
            raise MsnError(url, f"{why}; use another --store or the store's settings")
        return cls(url, root, existing)

    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> PatchStore:
        """Open an existing store (read-only by default)."""
        import zarr

        import msn_cli.io.zarr_codec  # noqa: F401 - registers msn.image with zarr

        url = str(url)
        loc = _location(url)
        if "://" not in loc and not Path(loc).exists():
            raise MsnError(url, "no such patch store; create it with `msn tile`")
        try:
            root = zarr.open_group(loc, mode=mode)
        except Exception as exc:
            raise MsnError(url, f"not a readable Zarr store: {exc}") from exc
        return cls(url, root, _spec_or_fail(url, dict(root.attrs)))

    # -- reading ---------------------------------------------------------------------------
    def slides(self, split: str | None = None, complete_only: bool = True) -> list[SlideRecord]:
        """Slides in name order, of one split if given, complete ones only by default."""
        if split is not None and split not in SPLITS:
            raise MsnError(self.url, f"unknown split {split!r}; expected one of {SPLITS}")
        out = []
        with _quiet_temporaries():
            names = sorted(self.root.group_keys())
        for name in names:
            if name.startswith(_TEMP_PREFIXES):
                continue
            rec = self.slide(name)
            if rec is None or (complete_only and not rec.complete):
                continue
            if split is None or rec.split == split:
                out.append(rec)
        return out

    def slide(self, name: str) -> SlideRecord | None:
        """The slide group ``name``, or None if absent or unreadable (e.g. killed mid-write)."""
        try:
            group = self.root[name]
            attrs = dict(group.attrs).get(_SLIDE_KEY)
        except Exception:
            return None
        if not isinstance(attrs, dict):
            return None
        return SlideRecord(name, attrs, group)

    # -- writing ---------------------------------------------------------------------------
    def begin_slide(self, name: str, attrs: dict[str, Any], layout: SlideLayout, n: int):
        """An empty, incomplete group for slide ``name`` with ``n`` patches laid as ``layout``.

        On a local store it is written as ``__partial__<name>`` and renamed over ``name`` only
        when complete, so a failed re-tile leaves the earlier complete slide as it was. Other
        stores cannot rename: there the old group is replaced at once.
        """
        local = self._local_dir()
        target = _PARTIAL + name if local is not None else name
        for stale in (target, _OLD + name):
            if stale in set(self.root.group_keys()):
                del self.root[stale]
        group = self.root.create_group(target)
        group.attrs.update(
            {_SLIDE_KEY: {**attrs, "layout": layout.to_attrs(), "complete": False, "n_patches": n}}
        )
        c, s = layout.chunk, layout.shard_side
        label_codec = ChunkCodec.parse(LABEL_CODEC)
        for key, label, img in zip(IMAGES, LABELS, layout.images, strict=True):
            image_codec = ChunkCodec.parse(img.codec)
            group.create_array(
                key, shape=(*img.shape, 3), chunks=(c, c, 3), shards=(s, s, 3), dtype="uint8",
                fill_value=0, **image_codec.zarr_codecs(),
            )  # fmt: skip
            group.create_array(
                label, shape=img.shape, chunks=(c, c), shards=(s, s), dtype="uint8",
                fill_value=IGNORE_LABEL, **label_codec.zarr_codecs(),
            )  # fmt: skip
        rows = (max(n, 1),)
        for key, shape, dtype in (
            ("centers", (n, 2), "float64"),
            ("tissue", (n,), "float32"),
            ("grid", (n, 2), "int32"),
            ("origins", (n, 3, 2), "int32"),
        ):
            group.create_array(key, shape=shape, chunks=rows + shape[1:], dtype=dtype)
        return SlideWriter(group, lambda: self._commit(target, name))

    def slide_lock(self, name: str, wait: bool = False):
        """An exclusive lock on slide ``name`` between processes writing this store (a
        context manager; :class:`msn_cli.io.lock.Busy` when another holds it, unless
        ``wait``). Stores not on the local file system are not locked."""
        from contextlib import nullcontext

        from msn_cli.io.atomic import atomic_write_json
        from msn_cli.io.lock import exclusive

        local = self._local_dir()
        if local is None:
            return nullcontext()
        locks = local / _LOCKS
        if not (locks / "zarr.json").is_file():  # an empty group, so zarr sees no stray files
            locks.mkdir(exist_ok=True)
            atomic_write_json(locks / "zarr.json", _EMPTY_GROUP)
        return exclusive(locks / f"{name}.lock", wait=wait)

    def _local_dir(self) -> Path | None:
        """The store's folder on the local file system, or None (remote or in-memory)."""
        from zarr.storage import LocalStore

        store = self.root.store
        if not isinstance(store, LocalStore):
            return None
        return Path(store.root) / self.root.path if self.root.path else Path(store.root)

    def _commit(self, written: str, name: str) -> None:
        """Swap a completed ``__partial__`` group in for ``name`` (two directory renames)."""
        if written == name:
            return
        import shutil

        base = self._local_dir()
        assert base is not None  # only local stores write under a temporary name
        final, old = base / name, base / (_OLD + name)
        if final.exists():
            final.rename(old)
        (base / written).rename(final)
        shutil.rmtree(old, ignore_errors=True)


class SlideWriter:
    """Writes one slide's shards (encoded elsewhere, :mod:`msn_cli.io.shards`), then its patch
    table, then marks it complete.

    Example:
        >>> writer.put("x1", (0, 0), shard_bytes(chunks, (8, 8, 1)))  # doctest: +SKIP
        >>> writer.finish({"centers": c, "tissue": t, "grid": g, "origins": o})  # doctest: +SKIP
    """

    def __init__(self, group, commit=None) -> None:
        self.group = group
        self._commit = commit

    def put(self, key: str, shard: tuple[int, int], payload: bytes) -> None:
        """Store one whole shard (row, column of the shard grid) of image or label ``key``."""
        from msn_cli.io.shards import put_shard

        arr = self.group[key]
        put_shard(arr, tuple(shard) + (0,) * (arr.ndim - 2), payload)

    def finish(self, table: dict[str, np.ndarray], **extra: Any) -> None:
        """Write the patch table, then set ``complete`` (last, in one metadata write)."""
        for key in TABLE:
            if len(table[key]):
                self.group[key][:] = table[key]
        attrs = dict(self.group.attrs)[_SLIDE_KEY]
        self.group.attrs.update({_SLIDE_KEY: {**attrs, **extra, "complete": True}})
        if self._commit is not None:
            self._commit()


@contextmanager
def _quiet_temporaries():
    """Silence zarr's warning about another process's temporary ``zarr.*.partial`` files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at .* is not recognized")
        yield


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


def _location(url: str | Path) -> str:
    """A local path for ``file://`` URLs (LocalStore: atomic writes), else the URL itself."""
    url = str(url)
    return url[len("file://") :] if url.startswith("file://") else url


def _spec_or_fail(url: str, attrs: dict[str, Any]) -> StoreSpec:
    raw = attrs.get(_ROOT_KEY)
    if not isinstance(raw, dict):
        raise MsnError(url, "not an msn patch store (no msn_store attributes)")
    try:
        spec = StoreSpec.from_attrs(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise MsnError(url, f"corrupt store attributes: {exc}") from exc
    if spec.schema_version < SCHEMA_VERSION:
        raise MsnError(
            url,
            f"store schema version {spec.schema_version} was written by an earlier msn; this msn "
            f"reads schema {SCHEMA_VERSION}: re-tile the slides into a new --store",
        )
    if spec.schema_version != SCHEMA_VERSION:
        raise MsnError(
            url,
            f"store schema version {spec.schema_version} is newer than this msn reads "
            f"({SCHEMA_VERSION}); upgrade msn",
        )
    return spec


def _fmt(v) -> str:
    if isinstance(v, tuple | list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)

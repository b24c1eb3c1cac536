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

This module opens, creates and lists stores and their slide groups. The attributes are typed
records in :mod:`msn_cli.io.store_schema` (:class:`StoreSpec`, :class:`SlideAttrs`,
:class:`SlideLayout`); one slide group is read and written through
:mod:`msn_cli.io.store_slide` (:class:`SlideRecord`, :class:`SlideWriter`). All of them are
importable from here.

Example:
    >>> spec = StoreSpec(256, (16.0, 4.0, 1.0), ("normal", "benign", "in situ", "invasive"))
    >>> store = PatchStore.create(tmp_path / "store.zarr", spec)  # doctest: +SKIP
    >>> [s.name for s in store.slides("train")]  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError
from msn_cli.io.codecs import LABEL_CODEC, ChunkCodec
from msn_cli.io.store_schema import (
    MAX_PATCH_SIZE,
    ROOT_KEY,
    SCHEMA_VERSION,
    SHARD_CHUNKS,
    SLIDE_KEY,
    SPLITS,
    TABLE,
    BranchImage,
    SlideAttrs,
    SlideLayout,
    StoreSpec,
    TileParams,
    slide_name,
    slide_stem,
)
from msn_cli.io.store_slide import SlideRecord, SlideWriter
from msn_cli.vocab import BRANCHES, IGNORE, LABELS

__all__ = [
    "MAX_PATCH_SIZE", "SCHEMA_VERSION", "SHARD_CHUNKS",
    "SPLITS", "TABLE", "BranchImage", "PatchStore", "SlideAttrs", "SlideLayout", "SlideRecord",
    "SlideWriter", "StoreSpec", "TileParams", "slide_name", "slide_stem",
]  # fmt: skip

_PARTIAL = "__partial__"
_OLD = "__old__"
#: A group of lock files, one per slide being tiled (:meth:`PatchStore.slide_lock`).
_LOCKS = "__locks__"
_TEMP_PREFIXES = (_PARTIAL, _OLD, _LOCKS)
_EMPTY_GROUP = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


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
        if ROOT_KEY not in attrs:
            with _quiet_temporaries():
                others = any(True for _ in root.group_keys())
            if others:
                raise MsnError(url, "not an msn patch store (no msn_store attributes)")
            root.attrs.update({ROOT_KEY: spec.to_attrs()})
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
            attrs = dict(group.attrs).get(SLIDE_KEY)
        except Exception:
            return None
        if not isinstance(attrs, dict):
            return None
        return SlideRecord(name, attrs, group)

    # -- writing ---------------------------------------------------------------------------
    def begin_slide(
        self, name: str, attrs: SlideAttrs | Mapping[str, Any], layout: SlideLayout, n: int
    ):
        """An empty, incomplete group for slide ``name`` with ``n`` patches laid as ``layout``,
        described by ``attrs`` (what ``tile`` records; a plain mapping is stored as it is).

        On a local store it is written as ``__partial__<name>`` and renamed over ``name`` only
        when complete, so a failed re-tile leaves the earlier complete slide as it was. Other
        stores cannot rename: there the old group is replaced at once.
        """
        local = self._local_dir()
        target = _PARTIAL + name if local is not None else name
        for stale in (target, _OLD + name):
            if stale in set(self.root.group_keys()):
                del self.root[stale]
        from msn_cli.io.zarr_codec import zarr_codecs

        group = self.root.create_group(target)
        own = attrs.to_attrs() if isinstance(attrs, SlideAttrs) else dict(attrs)
        group.attrs.update(
            {SLIDE_KEY: {**own, "layout": layout.to_attrs(), "complete": False, "n_patches": n}}
        )
        c, s = layout.chunk, layout.shard_side
        label_codec = ChunkCodec.parse(LABEL_CODEC)
        for key, label, img in zip(BRANCHES, LABELS, layout.images, strict=True):
            image_codec = ChunkCodec.parse(img.codec)
            group.create_array(
                key, shape=(*img.shape, 3), chunks=(c, c, 3), shards=(s, s, 3), dtype="uint8",
                fill_value=0, **zarr_codecs(image_codec),
            )  # fmt: skip
            group.create_array(
                label, shape=img.shape, chunks=(c, c), shards=(s, s), dtype="uint8",
                fill_value=IGNORE, **zarr_codecs(label_codec),
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


@contextmanager
def _quiet_temporaries():
    """Silence zarr's warning about another process's temporary ``zarr.*.partial`` files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at .* is not recognized")
        yield


def _location(url: str | Path) -> str:
    """A local path for ``file://`` URLs (LocalStore: atomic writes), else the URL itself."""
    url = str(url)
    return url[len("file://") :] if url.startswith("file://") else url


def _spec_or_fail(url: str, attrs: dict[str, Any]) -> StoreSpec:
    raw = attrs.get(ROOT_KEY)
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

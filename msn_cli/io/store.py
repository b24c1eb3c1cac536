"""The patch store (DESIGN.md §1): the only module that knows its layout.

A Zarr v3 group. Root attributes ``msn_store`` hold the schema version, patch size, the three
relative magnifications, the class names and the ignore label. One child group per slide,
written by exactly one process, holds N aligned patch triplets::

    x1 x2 x3   uint8   (N, P, P, 3)   images at the three magnifications
    y1 y2 y3   uint8   (N, P, P)      class indices, 255 = ignore
    centers    float64 (N, 2)         level-0 x, y of the shared patch centre
    tissue     float32 (N,)           tissue fraction of the X1 patch

One patch per chunk, ``SHARD_PATCHES`` chunks per shard file. Slide attributes (``msn_slide``)
name the source, its fingerprint, the split, level-0 size, mpp, each branch's level-0
downsample, the patch count, the tiling parameters and ``complete``, which is set last: readers
only ever see complete slides.

Example:
    >>> spec = StoreSpec(256, (16.0, 4.0, 1.0), ("normal", "benign", "in situ", "invasive"))
    >>> store = PatchStore.create(tmp_path / "store.zarr", spec)  # doctest: +SKIP
    >>> [s.name for s in store.slides("train")]  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.errors import MsnError

SCHEMA_VERSION = 1
IGNORE_LABEL = 255
SPLITS = ("train", "sub-train", "test")
IMAGES = ("x1", "x2", "x3")
LABELS = ("y1", "y2", "y3")
SHARD_PATCHES = 64
_ZSTD_LEVEL = 1
_ROOT_KEY = "msn_store"
_PARTIAL = "__partial__"
_OLD = "__old__"
_TEMP_PREFIXES = (_PARTIAL, _OLD)
_SLIDE_KEY = "msn_slide"


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


@dataclass
class SlideRecord:
    """One slide group: typed read-only views of its attributes."""

    name: str
    attrs: dict[str, Any]
    group: Any = field(repr=False)

    source = property(lambda self: self.attrs["source"])
    fingerprint = property(lambda self: self.attrs["fingerprint"])
    split = property(lambda self: self.attrs["split"])
    size = property(lambda self: tuple(self.attrs["size"]))
    mpp = property(lambda self: self.attrs.get("mpp"))
    downsamples = property(lambda self: tuple(self.attrs["downsamples"]))
    params = property(lambda self: self.attrs.get("params", {}))
    complete = property(lambda self: bool(self.attrs.get("complete")))
    #: Pixel count of each label value of y1 (index 255: ignore), recorded by ``tile``.
    label_pixels = property(lambda self: list(self.attrs.get("label_pixels", [])))

    @property
    def n_patches(self) -> int:
        return int(self.attrs.get("n_patches", 0))

    def array(self, name: str):
        return self.group[name]

    def read(self, name: str, index) -> np.ndarray:
        """Read ``index`` (an int, a slice or a sorted index array) of one array.

        An index array is read as runs of consecutive indices, one slice each (whole chunks;
        zarr's orthogonal selection is ten times slower on sharded arrays).
        """
        arr = self.group[name]
        if not isinstance(index, np.ndarray):
            return arr[index]
        if index.size == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        runs = np.split(index, breaks)
        return np.concatenate([arr[int(r[0]) : int(r[-1]) + 1] for r in runs])


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
    def begin_slide(self, name: str, attrs: dict[str, Any], n: int) -> SlideWriter:
        """An empty, incomplete group for slide ``name`` sized for ``n`` patches.

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
        group.attrs.update({_SLIDE_KEY: {**attrs, "complete": False, "n_patches": n}})
        p = self.spec.patch_size
        shapes = {
            **{k: ((n, p, p, 3), (1, p, p, 3)) for k in IMAGES},
            **{k: ((n, p, p), (1, p, p)) for k in LABELS},
        }
        for key, (shape, chunk) in shapes.items():
            shard = (SHARD_PATCHES, *chunk[1:])
            group.create_array(
                key,
                shape=shape,
                chunks=chunk,
                shards=shard,
                dtype="uint8",
                fill_value=0,
                compressors=_compressor(key),
            )
        group.create_array("centers", shape=(n, 2), chunks=(max(n, 1), 2), dtype="float64")
        group.create_array("tissue", shape=(n,), chunks=(max(n, 1),), dtype="float32")
        return SlideWriter(group, n, lambda: self._commit(target, name))

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


class ShardBuffer:
    """One shard's worth of patches of every array, filled in place before it is written.

    Each image array's patches live inside the bytes of its future shard file, so writing
    a shard copies nothing: patches are copied once, into :attr:`x`, and that is all.
    """

    def __init__(self, patch_size: int) -> None:
        p = patch_size
        self.chunk = p * p * 3
        self._payload = [
            np.empty(SHARD_PATCHES * self.chunk + _INDEX_BYTES, np.uint8) for _ in IMAGES
        ]
        self.x = [
            b[: SHARD_PATCHES * self.chunk].reshape(SHARD_PATCHES, p, p, 3) for b in self._payload
        ]
        self.y = [np.empty((SHARD_PATCHES, p, p), np.uint8) for _ in LABELS]
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == SHARD_PATCHES

    def add(self, x: Sequence[np.ndarray], y: Sequence[np.ndarray], start: int = 0) -> int:
        """Copy patches ``start:`` of ``x``/``y`` until full; returns how many were taken."""
        take = min(SHARD_PATCHES - self.n, len(x[0]) - start)
        for dst, src in zip(self.x, x, strict=True):
            dst[self.n : self.n + take] = src[start : start + take]
        for dst, src in zip(self.y, y, strict=True):
            dst[self.n : self.n + take] = src[start : start + take]
        self.n += take
        return take


class SlideWriter:
    """Writes one slide's arrays shard by shard, then marks the slide complete.

    Shards are encoded here, in the Zarr v3 ``sharding_indexed`` layout (inner chunks
    back to back, then the index of little-endian uint64 (offset, length) pairs per chunk and
    its CRC32C), and stored with one ``set`` each: zarr's generic write path costs about 1 ms
    per inner chunk, more than decoding the slide. Everything is read back through zarr.

    Example:
        >>> buf = writer.new_buffer()  # doctest: +SKIP
        >>> buf.add(x, y); writer.write_shard(0, buf)  # doctest: +SKIP
    """

    def __init__(self, group, n: int, commit=None) -> None:
        self.group = group
        self.n = n
        self._commit = commit
        self.patch_size = int(group["y1"].shape[1])

    def new_buffer(self) -> ShardBuffer:
        return ShardBuffer(self.patch_size)

    def write(self, start: int, x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> None:
        """Write patches ``start:start+len`` (``start`` on a shard boundary; a partial shard
        only at the end of the slide)."""
        count = len(x[0])
        if start % SHARD_PATCHES or (count % SHARD_PATCHES and start + count != self.n):
            raise ValueError(f"writes must cover whole shards: {start}+{count} of {self.n}")
        buf, taken = self.new_buffer(), 0
        while taken < count:
            buf.n = 0
            got = buf.add(x, y, taken)
            self.write_shard((start + taken) // SHARD_PATCHES, buf)
            taken += got

    def write_shard(self, shard: int, buf: ShardBuffer) -> None:
        """Write shard number ``shard`` of every array from ``buf`` (its first ``buf.n``)."""
        if buf.n < SHARD_PATCHES and (shard + 1) * SHARD_PATCHES < self.n:
            raise ValueError(f"shard {shard} is not the last one but holds {buf.n} patches")
        n = buf.n
        for key, payload in zip(IMAGES, buf._payload, strict=True):
            sizes = np.full(n, buf.chunk, dtype=np.uint64)
            tail = _index_bytes(sizes)
            end = n * buf.chunk
            payload[end : end + len(tail)] = np.frombuffer(tail, np.uint8)
            self._put(key, shard, payload[: end + len(tail)])
        for key, data in zip(LABELS, buf.y, strict=True):
            chunks = _encode_chunks(data[:n])
            tail = _index_bytes(np.array([len(c) for c in chunks], dtype=np.uint64))
            self._put(key, shard, np.frombuffer(b"".join([*chunks, tail]), np.uint8))

    def _put(self, key: str, shard: int, payload: np.ndarray) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        arr = self.group[key]
        chunk_key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
        buf = default_buffer_prototype().buffer.from_array_like(payload)
        sync((arr.store_path / chunk_key).set(buf))

    def finish(self, centers: np.ndarray, tissue: np.ndarray, **extra: Any) -> None:
        """Write the per-patch tables, then set ``complete`` (last, in one metadata write)."""
        if len(centers):
            self.group["centers"][:] = centers
            self.group["tissue"][:] = tissue
        attrs = dict(self.group.attrs)[_SLIDE_KEY]
        self.group.attrs.update({_SLIDE_KEY: {**attrs, **extra, "complete": True}})
        if self._commit is not None:
            self._commit()


def _index_bytes(sizes: np.ndarray) -> bytes:
    """The shard index for chunks of ``sizes`` stored back to back, with its CRC32C."""
    index = np.full((SHARD_PATCHES, 2), _EMPTY, dtype="<u8")
    n = len(sizes)
    index[:n, 0] = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    index[:n, 1] = sizes
    raw = index.tobytes()  # (chunks per shard, 1, ..., 2) in C order: the same bytes
    return raw + np.uint32(_crc32c(raw)).tobytes()


_EMPTY = 2**64 - 1
_INDEX_BYTES = SHARD_PATCHES * 16 + 4


def _encode_chunks(data: np.ndarray) -> list[bytes]:
    """Label chunks (one patch each), zstd-compressed as the array's codec declares."""
    from numcodecs import Zstd

    codec = Zstd(level=_ZSTD_LEVEL)
    return [bytes(codec.encode(data[i].tobytes())) for i in range(len(data))]


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)


@contextmanager
def _quiet_temporaries():
    """Silence zarr's warning about another process's temporary ``zarr.*.partial`` files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at .* is not recognized")
        yield


def slide_name(path: str | Path) -> str:
    """The group name of a slide: its file name without the extension(s), made safe."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "slide"


def _location(url: str | Path) -> str:
    """A local path for ``file://`` URLs (LocalStore: atomic writes), else the URL itself."""
    url = str(url)
    return url[len("file://") :] if url.startswith("file://") else url


def _compressor(key: str):
    """Labels compress 20-100x with zstd; decoded slide pixels (JPEG noise) barely at all, and
    compressing ~0.3 GB/s of them would halve tiling speed on a small machine: stored raw."""
    from zarr.codecs import ZstdCodec

    return None if key in IMAGES else ZstdCodec(level=_ZSTD_LEVEL)


def _spec_or_fail(url: str, attrs: dict[str, Any]) -> StoreSpec:
    raw = attrs.get(_ROOT_KEY)
    if not isinstance(raw, dict):
        raise MsnError(url, "not an msn patch store (no msn_store attributes)")
    try:
        spec = StoreSpec.from_attrs(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise MsnError(url, f"corrupt store attributes: {exc}") from exc
    if spec.schema_version != SCHEMA_VERSION:
        raise MsnError(
            url, f"store schema version {spec.schema_version}; this msn reads {SCHEMA_VERSION}"
        )
    return spec


def _fmt(v) -> str:
    if isinstance(v, tuple | list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)

"""One slide group of the patch store: :class:`SlideRecord` reads it, :class:`SlideWriter`
writes it (:meth:`msn_cli.io.store.PatchStore.begin_slide` makes one).

The group's arrays and attributes are described in :mod:`msn_cli.io.store` and
:mod:`msn_cli.io.store_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from msn_cli.io.store_schema import SLIDE_KEY, TABLE, SlideLayout
from msn_cli.vocab import BRANCHES, LABELS


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
        if name in BRANCHES or name in LABELS:
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
        b = (BRANCHES if name in BRANCHES else LABELS).index(name)
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
        attrs = dict(self.group.attrs)[SLIDE_KEY]
        self.group.attrs.update({SLIDE_KEY: {**attrs, **extra, "complete": True}})
        if self._commit is not None:
            self._commit()

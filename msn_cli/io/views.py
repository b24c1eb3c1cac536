"""Reading patch views out of a slide's branch images, through a cache of decoded chunks.

A view (one patch of one branch) is a P x P window of a chunked, compressed image. Neighbouring
patches share chunks: every X3 view of a slide falls in a handful of X3 chunks, and an X2 chunk
serves 16 patches. Decoded chunks are kept in one least-recently-used cache per process
(``MSN_READ_CACHE_MB``, default 256; 0 turns it off), so a chunk is decoded once however many
views and epochs read it. A miss reads the chunk-aligned box of every missing chunk of a run
of views with one zarr call.

Example:
    >>> out = read_views(arr, key, chunk=256, patch=256, origins=o, grid=g)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

_DEFAULT_MB = 256


class ChunkCache:
    """A byte-bounded LRU of decoded chunks, safe to share between threads."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self.size = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: tuple, arr: np.ndarray) -> None:
        if arr.nbytes > self.budget:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = arr
            self.size += arr.nbytes
            while self.size > self.budget:
                _, old = self._items.popitem(last=False)
                self.size -= old.nbytes


_cache: ChunkCache | None = None


def cache() -> ChunkCache:
    global _cache
    if _cache is None:
        mb = float(os.environ.get("MSN_READ_CACHE_MB", _DEFAULT_MB))
        _cache = ChunkCache(int(mb * 2**20))
    return _cache


def read_views(arr, key: tuple, chunk: int, patch: int, origins: np.ndarray, grid: np.ndarray):
    """Views ``arr[y:y+P, x:x+P]`` at ``origins`` (n, 2: x, y); ``grid`` (n, 2) groups patches of
    one grid row into runs read as one region. ``key`` names the array in the cache."""
    n, p = len(origins), patch
    out = np.empty((n, p, p, *arr.shape[2:]), dtype=arr.dtype)
    if not n:
        return out
    breaks = np.flatnonzero((np.diff(grid[:, 1]) != 0) | (np.diff(grid[:, 0]) != 1)) + 1
    for run in np.split(np.arange(n), breaks):
        x0, y0 = int(origins[run[0], 0]), int(origins[run[0], 1])
        x1 = int(origins[run[-1], 0]) + p
        region = _region(arr, key, chunk, y0, y0 + p, x0, x1)
        for k in run:
            dx = int(origins[k, 0]) - x0
            out[k] = region[:, dx : dx + p]
    return out


def _region(arr, key: tuple, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``arr[y0:y1, x0:x1]`` assembled from cached chunks, the missing ones read at once."""
    store = cache()
    if store.budget <= 0:
        return arr[y0:y1, x0:x1]
    rows, cols = range(y0 // c, (y1 - 1) // c + 1), range(x0 // c, (x1 - 1) // c + 1)
    got = {(r, k): store.get((*key, r, k)) for r in rows for k in cols}
    missing = [rk for rk, v in got.items() if v is None]
    if missing:
        r0, r1 = min(r for r, _ in missing), max(r for r, _ in missing) + 1
        k0, k1 = min(k for _, k in missing), max(k for _, k in missing) + 1
        h, w = arr.shape[:2]
        box = arr[r0 * c : min(r1 * c, h), k0 * c : min(k1 * c, w)]
        for r, k in missing:
            part = np.ascontiguousarray(box[(r - r0) * c : (r - r0 + 1) * c, (k - k0) * c :][:, :c])
            got[(r, k)] = part
            store.put((*key, r, k), part)
    out = np.empty((y1 - y0, x1 - x0, *arr.shape[2:]), dtype=arr.dtype)
    for (r, k), part in got.items():
        ya, xa = max(r * c, y0), max(k * c, x0)
        yb, xb = min(r * c + part.shape[0], y1), min(k * c + part.shape[1], x1)
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = part[
            ya - r * c : yb - r * c, xa - k * c : xb - k * c
        ]
    return out

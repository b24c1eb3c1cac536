"""An on-disk cache of what frozen parts of the model produce, one row per fit patch.

Each named array is a ``.npy`` file (``numpy.lib.format.open_memmap``), read back through a
memory map opened lazily in each DataLoader worker: never the whole cache in memory. A
``manifest.json`` written last (atomically) names the key the cache was made for (the frozen
weights, the layers, the patches); a cache whose manifest is missing or names another key is
rebuilt. Under torchrun, rank 0 creates the files and every rank fills its own rows.

Example:
    >>> c = ArrayCache(tmp / "cache", {"a": ((4, 2), "float16")}, n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.io.atomic import atomic_write_json


class ArrayCache:
    """Arrays ``name -> (row shape, dtype)`` of ``n`` rows under ``directory``."""

    def __init__(self, directory: Path, arrays: Mapping[str, tuple[tuple[int, ...], str]], n: int):
        self.dir = Path(directory)
        self.arrays = {k: (tuple(int(s) for s in v[0]), str(v[1])) for k, v in arrays.items()}
        self.n = int(n)
        self.manifest = self.dir / "manifest.json"
        self._maps: dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        return sum(self.n * int(np.prod(s)) * np.dtype(d).itemsize for s, d in self.arrays.values())

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.npy"

    def valid(self, key: str) -> bool:
        if not self.manifest.is_file():
            return False
        try:
            info = json.loads(self.manifest.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return info.get("key") == key and all(self.path(k).is_file() for k in self.arrays)

    def create(self) -> None:
        """(Re)create empty arrays and drop the manifest (rank 0 only)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.manifest.exists():
            self.manifest.unlink()
        for name, (shape, dtype) in self.arrays.items():
            arr = np.lib.format.open_memmap(
                self.path(name), mode="w+", dtype=dtype, shape=(self.n, *shape)
            )
            del arr

    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        arr = np.lib.format.open_memmap(self.path(name), mode="r+")
        arr[np.asarray(rows)] = values
        arr.flush()
        del arr

    def seal(self, key: str, info: dict[str, Any] | None = None) -> None:
        atomic_write_json(self.manifest, {"key": key, "rows": self.n, **(info or {})})

    def read(self, name: str, rows) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = np.load(self.path(name), mmap_mode="r")
        return self._maps[name][np.asarray(rows)]

    def load(self, name: str) -> np.ndarray:
        """A whole (small) array in memory."""
        return np.load(self.path(name))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (and file contents, for Paths)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(file_digest(p).encode())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def normalization_part(normalize: Any) -> tuple[str, ...]:
    """What a cache key adds for the checkpoint's input normalisation: nothing for msn's
    default (caches made before it was recorded stay valid), else its values."""
    from msn_cli.io.card import DEFAULT_NORMALIZE

    return () if normalize == DEFAULT_NORMALIZE else (str(normalize),)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

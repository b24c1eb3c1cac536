"""A PyTorch ``Dataset`` over one split of the patch store.

Each sample's fields are views cut from its slide's branch images (:meth:`SlideRecord.read`,
through the decoded-chunk cache of :mod:`msn_cli.io.views`), never the whole store; a
DataLoader batch is read slide by slide (``__getitems__``). Store handles open lazily in each
DataLoader worker, so the dataset pickles cheaply.

Example:
    >>> ds = PatchDataset("store.zarr", split="train")  # doctest: +SKIP
    >>> s = ds[0]; s["x1"].shape, s["x1"].dtype, s["y1"].shape  # doctest: +SKIP
    (torch.Size([3, 256, 256]), torch.uint8, torch.Size([256, 256]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from msn_cli.errors import MsnError
from msn_cli.io.store import PatchStore
from msn_cli.vocab import BRANCHES, LABELS

FIELDS = (*BRANCHES, *LABELS)
Sample = dict[str, torch.Tensor]


class PatchDataset(Dataset):
    """Aligned ``x1 x2 x3`` (uint8, C×P×P) and ``y1 y2 y3`` (uint8, P×P) of complete slides.

    ``split`` selects train / sub-train / test; ``slides`` restricts to named slides; ``fields``
    to some arrays (e.g. only ``("x3", "y3")`` for the meta-branch); ``transform`` maps a sample
    dict to a sample dict (augmentation). Each sample also has ``index`` (its dataset index).
    The slide list is fixed when the dataset is made: slides tiled later are not seen.
    """

    def __init__(
        self,
        store: str,
        split: str | None = None,
        slides: Sequence[str] | None = None,
        fields: Sequence[str] = FIELDS,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        bad = [f for f in fields if f not in FIELDS]
        if bad:
            raise ValueError(f"unknown fields {bad}; expected some of {FIELDS}")
        self.url = str(store)
        self.fields = tuple(fields)
        self.transform = transform
        opened = PatchStore.open(self.url)
        self.spec = opened.spec
        records = opened.slides(split)
        if slides is not None:
            wanted = set(slides)
            records = [r for r in records if r.name in wanted]
        self.slide_names = [r.name for r in records if r.n_patches > 0]
        counts = [r.n_patches for r in records if r.n_patches > 0]
        if not counts:
            where = f"split {split!r}" if split else "the store"
            raise MsnError(self.url, f"{where} has no patches; tile slides into it first")
        self._slide = np.repeat(np.arange(len(counts)), counts)
        self._patch = np.concatenate([np.arange(c) for c in counts])
        self._store: PatchStore | None = opened

    def __len__(self) -> int:
        return len(self._slide)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state.pop("_open_records", None)
        return state

    def _records(self):
        if self._store is None:
            self._store = PatchStore.open(self.url)
        return self._store

    def _record(self, store: PatchStore, name: str):
        """The slide's record, opened once per process (its patch table read once)."""
        cached = self.__dict__.setdefault("_open_records", {})
        if name not in cached:
            cached[name] = store.slide(name)
        return cached[name]

    def locate(self, index: int) -> tuple[str, int]:
        """(slide name, patch index within the slide) of a dataset index."""
        return self.slide_names[self._slide[index]], int(self._patch[index])

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} patches")
        out: list[Sample | None] = [None] * len(idx)
        store = self._records()
        for s in np.unique(self._slide[idx]):
            pos = np.flatnonzero(self._slide[idx] == s)
            local = self._patch[idx[pos]]
            order = np.argsort(local, kind="stable")
            uniq, inverse = np.unique(local[order], return_inverse=True)
            rec = self._record(store, self.slide_names[s])
            data = {f: rec.read(f, uniq) for f in self.fields}
            for k, p in enumerate(pos[order]):
                j = inverse[k]
                sample = {f: _tensor(f, data[f][j]) for f in self.fields}
                sample["index"] = torch.tensor(int(idx[p]))
                out[p] = self.transform(sample) if self.transform else sample
        return out  # type: ignore[return-value]


def _tensor(field: str, arr: np.ndarray) -> torch.Tensor:
    # numpy's transpose copy: torch's uint8 permute-copy runs 50x slower on its thread pool
    if field in BRANCHES:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))

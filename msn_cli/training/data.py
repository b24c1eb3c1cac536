"""Training data: augmentation, the fit set (optionally minus a hold-out), loaders.

Augmentation is a function of ``(seed, epoch, dataset index)`` only, never of worker count,
batch order or a process-global RNG, so a resumed epoch sees exactly the samples an
uninterrupted one would. It applies one of the eight flips/90° rotations to every spatial
field of a sample (``x1 x2 x3``, ``y1 y2 y3`` and any cached map: all centred on the same
point, so the centre alignment of the triplet is kept) and, optionally, the same colour
jitter to the three images (one stain, three magnifications).

Data order: a DistributedSampler (also for one process) seeded with ``seed`` and the epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from msn_cli import signals
from msn_cli.io.dataset import PatchDataset
from msn_cli.vocab import BRANCHES

Sample = dict[str, torch.Tensor]
_NOT_SPATIAL = ("index", "row")


class Augment:
    """Dihedral flips/rotations of every spatial field, optional colour jitter of the images.

    Example:
        >>> aug = Augment(seed=0)
        >>> s = {"index": torch.tensor(3), "y1": torch.arange(4).reshape(2, 2)}
        >>> sorted(aug(s)["y1"].flatten().tolist())
        [0, 1, 2, 3]
    """

    def __init__(
        self, seed: int, flips: bool = True, jitter: float = 0.0, images: Sequence[str] = BRANCHES
    ) -> None:
        self.seed, self.flips, self.jitter, self.images = int(seed), flips, float(jitter), images
        self.epoch = 0

    def params(self, index: int) -> tuple[int, bool, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        factors = rng.uniform(1 - self.jitter, 1 + self.jitter, size=3)
        return k, flip, factors

    def __call__(self, sample: Sample, epoch: int | None = None) -> Sample:
        if epoch is not None:
            self.epoch = epoch
        k, flip, factors = self.params(int(sample["index"]))
        out = dict(sample)
        for key, t in sample.items():
            if key in _NOT_SPATIAL:
                continue
            if self.flips:
                t = torch.rot90(t, k, dims=(-2, -1)) if k else t
                t = torch.flip(t, dims=(-1,)) if flip else t
            if self.jitter > 0 and key in self.images:
                t = color_jitter(t, *factors)
            out[key] = t.contiguous()
        return out


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float):
    """Brightness, contrast and saturation factors on a uint8 (3, H, W) image."""
    f = x.float()
    grey = f.mean(0, keepdim=True)
    f = grey + (f - grey) * saturation
    f = f.mean() + (f - f.mean()) * contrast
    return (f * brightness).round_().clamp_(0, 255).to(torch.uint8)


class FitView(Dataset):
    """The patches a stage fits on: ``indices`` of a PatchDataset, plus cached rows.

    Position ``i`` is dataset index ``indices[i]`` and cache row ``i``; each sample carries
    ``index`` (dataset index: drives augmentation) and ``row`` (position: the cache row).
    A sampler may ask for ``epoch * len(self) + i`` (:class:`EpochSampler`): the epoch then
    travels with the index, so persistent DataLoader workers augment for the right epoch.
    """

    def __init__(
        self,
        base: PatchDataset,
        indices: np.ndarray | None = None,
        cache: Any = None,
        cached: Sequence[str] = (),
        transform: Augment | None = None,
    ) -> None:
        self.base = base
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices)
        self.cache, self.cached, self.transform = cache, tuple(cached), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[Sample]:
        pos = np.asarray(positions, dtype=np.int64)
        epochs, pos = np.divmod(pos, len(self))
        samples = self.base.__getitems__(self.indices[pos].tolist())
        if self.cached:
            data = {name: self.cache.read(name, pos) for name in self.cached}
        out = []
        for k, (p, s) in enumerate(zip(pos, samples, strict=True)):
            s["row"] = torch.tensor(int(p))
            for name in self.cached:
                s[name] = torch.from_numpy(np.ascontiguousarray(data[name][k]))
            out.append(self.transform(s, int(epochs[k])) if self.transform else s)
        return out


def default_workers(world: int = 1) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) // max(1, world) - 1))


class EpochSampler(DistributedSampler):
    """DistributedSampler (seeded by seed and epoch) that yields ``epoch * n + i``."""

    def __iter__(self):
        n = len(self.dataset)  # type: ignore[arg-type]
        return (self.epoch * n + i for i in super().__iter__())


def train_loader(dataset: FitView, batch_size: int, seed: int, ctx, workers: int) -> DataLoader:
    """Shuffled by (seed, epoch), sharded over ranks, persistent workers; call
    ``loader.sampler.set_epoch(epoch)`` before each epoch. The last batch may be smaller."""
    sampler = EpochSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed)
    return _loader(dataset, batch_size, sampler, seed, ctx, workers, persistent=workers > 0)


def ordered_loader(dataset: Dataset, batch_size: int, ctx, workers: int, shard: bool = True):
    """In order; with ``shard`` every rank gets a disjoint contiguous part (no padding)."""
    n = len(dataset)
    lo, hi = (n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world) if shard else (0, n)
    return _loader(dataset, batch_size, list(range(lo, hi)), 0, ctx, workers)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process: a terminal sends SIGINT to the
    whole process group, and a worker dying of it first would turn "interrupted" (exit 130)
    into "DataLoader worker exited unexpectedly". Once the main process has gone, a worker
    thread still handing it a tensor's file descriptor meets a closed connection: that is
    the main process's exit, which it reports itself, so the worker stays silent about it
    rather than print a traceback under "msn: error: interrupted"."""
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # multiprocessing's resource sharer reports through sys.excepthook, other threads
    # through threading.excepthook
    report, report_thread = sys.excepthook, threading.excepthook

    def quiet(exc_type, exc, tb) -> None:
        if not issubclass(exc_type, ConnectionError):  # BrokenPipe, ConnectionReset
            report(exc_type, exc, tb)

    def quiet_thread(args) -> None:
        if not issubclass(args.exc_type, ConnectionError):
            report_thread(args)

    sys.excepthook, threading.excepthook = quiet, quiet_thread


class Loader(DataLoader):
    """A DataLoader whose every batch first re-raises a Ctrl-C that starting its workers
    swallowed (:mod:`msn_cli.signals`)."""

    def __iter__(self):
        for batch in super().__iter__():
            signals.check()
            yield batch


def _loader(dataset, batch_size, sampler, seed, ctx, workers, persistent=False) -> DataLoader:
    return Loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(int(seed)),
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent,
        worker_init_fn=ignore_sigint if workers else None,
    )


def holdout_split(ds: PatchDataset, fraction: float, seed: int) -> dict[str, list[int]]:
    """``fraction`` of the patches of ``ds``, chosen with ``seed``: {slide: [patch, ...]}."""
    n = len(ds)
    k = int(round(fraction * n))
    chosen = np.sort(np.random.default_rng([seed, 4242]).permutation(n)[:k])
    held: dict[str, list[int]] = {}
    for i in chosen:
        slide, patch = ds.locate(int(i))
        held.setdefault(slide, []).append(patch)
    return held


def indices_of(ds: PatchDataset, patches: dict[str, list[int]], inside: bool) -> np.ndarray:
    """Dataset indices of ``patches`` ({slide: [patch]}) or, with ``inside=False``, the rest."""
    wanted = {(s, int(p)) for s, ps in patches.items() for p in ps}
    mask = np.array([ds.locate(i) in wanted for i in range(len(ds))], dtype=bool)
    return np.flatnonzero(mask if inside else ~mask)

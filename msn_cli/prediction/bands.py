"""Walking a slide's bands: tissue, batches through the model, painting, saving.

A *band* is the level-0 rows owned by one row of X1 patches. :func:`run_bands` measures each
patch's tissue on a thumbnail, reads the triplets of the tissue patches of the bands still to
do (:func:`~msn_cli.io.workers.in_order`, worker threads), runs the model on full batches in the
main thread, and paints the labels into the current band (:class:`BandPainter`); each finished
band goes to the :class:`~msn_cli.prediction.partial.BandStore` from a writer thread, so only
one band of predictions is ever in memory.

Overlap rule (:class:`Axis`): the last X1 patch of each row and column is shifted back inside
the image and overlaps its neighbour; the later patch wins, so each level-0 pixel belongs to
exactly one patch: the last one covering its centre.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from msn_cli.io.maskwriter import sample_index
from msn_cli.io.patches import extract
from msn_cli.io.slide import cached_slide
from msn_cli.io.tissue import tissue_fractions
from msn_cli.io.workers import in_order
from msn_cli.progress import progress


def _as_index(idx: np.ndarray):
    """A slice when ``idx`` is a contiguous range (the usual case), else the array."""
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return idx


@dataclass
class Axis:
    """Who owns what along one axis: grid positions, each one's pixel range, and the index of
    each owned level-0 pixel (and of each probability sample) in its patch."""

    pos: np.ndarray
    start: np.ndarray  # first owned level-0 pixel per grid position
    stop: np.ndarray
    index: list  # patch indices of the owned pixels
    coarse: list[slice]  # owned probability samples
    coarse_index: list  # their patch indices

    @classmethod
    def create(cls, pos: np.ndarray, extent: int, step: float, p: int, d: int) -> Axis:
        start = np.clip(np.ceil(pos - 0.5).astype(np.int64), 0, extent)
        stop = np.append(start[1:], extent)
        samples = sample_index(extent, d)

        def local(pixels: np.ndarray, k: int) -> np.ndarray:
            return np.clip(np.floor((pixels + 0.5 - pos[k]) / step).astype(np.int64), 0, p - 1)

        index, coarse, coarse_index = [], [], []
        for k in range(len(pos)):
            index.append(_as_index(local(np.arange(start[k], stop[k]), k)))
            a, b = np.searchsorted(samples, [start[k], stop[k]])
            coarse.append(slice(int(a), int(b)))
            coarse_index.append(local(samples[a:b], k))
        return cls(pos, start, stop, index, coarse, coarse_index)


def run_bands(
    predictor, job, config, geometry, corners, ncols, xs_axis, ys_axis, store, todo_rows
) -> int:
    """Predict the tissue patches of ``todo_rows`` and save each band; returns patches run."""
    slide = cached_slide(job.slide)
    footprint = geometry.footprint
    if config.min_tissue > 0:
        fractions = tissue_fractions(slide, corners, footprint)
        keep = fractions >= config.min_tissue
    else:
        keep = np.ones(len(corners), bool)
    centres = geometry.centres(corners)
    units: list[np.ndarray] = []
    for r in todo_rows:
        idx = np.flatnonzero(keep[r * ncols : (r + 1) * ncols]) + r * ncols
        units.extend(
            np.array_split(idx, math.ceil(len(idx) / config.batch_size)) if len(idx) else []
        )
    want_probs = job.needs_probabilities  # the Zarr, or the GeoJSON's mean probabilities
    painter = BandPainter(
        store, todo_rows, ncols, xs_axis, ys_axis, len(predictor.classes), want_probs
    )

    def work(i: int):
        return extract(cached_slide(job.slide), geometry, centres[units[i]]).x

    w0 = int(xs_axis.stop[-1])
    buf_idx: list[np.ndarray] = []
    buf_x: list[list[np.ndarray]] = [[], [], []]
    n_run = 0
    name = job.slide.name
    with (
        in_order(work, len(units), config.workers) as decoded,
        progress(name, len(corners), "patches") as bar,
    ):
        t_start = time.perf_counter()

        def on_band(r: int) -> None:
            mpx = painter.rows_done * w0 / 1e6
            bar.advance(ncols, Mpx_s=f"{mpx / (time.perf_counter() - t_start + 1e-9):.1f}")

        painter.on_band = on_band

        def run(n: int) -> None:
            nonlocal buf_idx, buf_x, n_run
            idx = np.concatenate(buf_idx)
            xs = [np.concatenate(b) for b in buf_x]
            labels, probs = predictor([x[:n] for x in xs], want_probs)
            for j, i in enumerate(idx[:n]):
                painter.paint(int(i), labels[j], None if probs is None else probs[j])
            buf_idx = [idx[n:]]
            buf_x = [[x[n:]] for x in xs]
            n_run += n

        for i, xs in enumerate(decoded):  # in order: unit i
            buf_idx.append(units[i])
            for b in range(3):
                buf_x[b].append(xs[b])
            have = sum(len(i) for i in buf_idx)
            while have >= config.batch_size:
                run(config.batch_size)
                have -= config.batch_size
        have = sum(len(i) for i in buf_idx)
        if have:
            run(have)
        painter.close()
    return n_run


class BandPainter:
    """Paints patch predictions into the current band; hands finished bands to a writer thread.

    Bands are finished in order: a band is saved when the first patch of a later band arrives
    (or at the end). Bands without predicted patches are saved as empty (all class 0).
    """

    def __init__(self, store, rows, ncols, xs_axis, ys_axis, n_classes, probs) -> None:
        self.store, self.rows, self.ncols = store, list(rows), ncols
        self.xa, self.ya, self.nc, self.want_probs = xs_axis, ys_axis, n_classes, probs
        self.width = int(xs_axis.stop[-1])
        self.coarse_width = xs_axis.coarse[-1].stop
        self.pos = 0  # next entry of self.rows not yet started
        self.cur: int | None = None
        self.labels: np.ndarray | None = None
        self.probs: np.ndarray | None = None
        self.rows_done = 0
        self.on_band = lambda rows: None
        self._writer = ThreadPoolExecutor(1)
        self._saving: Future | None = None

    def paint(self, i: int, lab: np.ndarray, prob: np.ndarray | None) -> None:
        r, c = divmod(i, self.ncols)
        if r != self.cur:
            self._advance(r)
        xa, ya = self.xa, self.ya
        self.labels[:, xa.start[c] : xa.stop[c]] = lab[ya.index[r]][:, xa.index[c]]
        if self.probs is not None and prob is not None:
            self.probs[:, :, xa.coarse[c]] = prob[:, ya.coarse_index[r]][:, :, xa.coarse_index[c]]

    def _advance(self, r: int) -> None:
        self._flush()
        while self.pos < len(self.rows) and self.rows[self.pos] < r:
            self._save(self.rows[self.pos], None, None)
            self.pos += 1
        if self.pos >= len(self.rows) or self.rows[self.pos] != r:
            raise RuntimeError(f"band {r} painted out of order")
        self.pos += 1
        self.cur = r
        rows = int(self.ya.stop[r] - self.ya.start[r])
        self.labels = np.zeros((rows, self.width), np.uint8)
        if self.want_probs:
            n = self.ya.coarse[r].stop - self.ya.coarse[r].start
            self.probs = np.zeros((self.nc, n, self.coarse_width), np.float16)
            self.probs[0] = 1.0

    def _flush(self) -> None:
        if self.cur is not None:
            self._save(self.cur, self.labels, self.probs)
        self.cur, self.labels, self.probs = None, None, None

    def _save(self, r: int, labels, probs) -> None:
        if self._saving is not None:
            self._saving.result()  # at most one band waiting to be written
        self._saving = self._writer.submit(self.store.save, r, labels, probs)
        self.rows_done += int(self.ya.stop[r] - self.ya.start[r])
        self.on_band(r)

    def close(self) -> None:
        self._flush()
        while self.pos < len(self.rows):
            self._save(self.rows[self.pos], None, None)
            self.pos += 1
        if self._saving is not None:
            self._saving.result()
        self._writer.shutdown()

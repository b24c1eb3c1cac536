"""Stage ``predict``: whole slides into pyramidal TIFF label masks (plus GeoJSON, overlay, Zarr).

For each slide: lay the paper's X1 grid (:class:`~msn_cli.io.patches.PatchGeometry`, as
``tile`` does), measure each patch's tissue on a thumbnail, read the triplets of tissue patches
with the one triplet reader (:func:`~msn_cli.io.patches.extract`) in worker threads, run the
checkpoint's chosen output on batches in the main thread, and paint the labels into a *band*:
the level-0 rows owned by one row of X1 patches. Background patches are class 0 without a model
call. Each finished band is written (zstd) to ``<out>.partial/`` by a writer thread, so only
one band of predictions is ever in memory; a killed run, rerun, keeps the finished bands.
When every band exists, the pyramidal TIFF is assembled from them (see
:mod:`msn_cli.io.maskwriter`) under a temporary name, the extras are derived, and the TIFF is
renamed to ``--out``; then the partial folder is removed.

Overlap rule: the last X1 patch of each row and column is shifted back inside the image and
overlaps its neighbour; *the later patch wins* (raster order: a row over the row above it, a
column over the column to its left). Each level-0 pixel therefore belongs to exactly one patch:
the last one covering its centre.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.atomic import atomic_write_bytes, atomic_write_json
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.maskwriter import read_description, read_level, sample_index, write_mask_tiff
from msn_cli.io.patches import Levels, PatchGeometry, base_downsample, extract
from msn_cli.io.slide import cached_slide, fingerprint, open_slide, read_scaled
from msn_cli.io.tissue import patch_fractions, thumbnail_downsample, thumbnail_mask
from msn_cli.progress import progress

log = logging.getLogger("msn")
BRANCH_CHOICES = ("fusion", "x1", "x2", "x3")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PredictConfig:
    """Settings shared by every slide of one ``msn predict`` run.

    Example:
        >>> PredictConfig(Path("checkpoints"), branch="x1").batch_size
        32
    """

    checkpoints: Path
    branch: str | None = None  # None: fusion when trained, else x1 (or the baseline's input)
    batch_size: int = 32
    device: str = "auto"
    min_tissue: float = 0.01  # 0: predict every patch
    mpp: float | None = None
    workers: int = 0
    amp: bool = False
    classes: tuple[str, ...] | None = None  # expected class names (refuse other checkpoints)
    probabilities_downsample: int = 16
    geojson_frame: str = "qupath"  # or "level0"
    trace_max_side: int = 4096
    overlay_max_side: int = 1024


@dataclass(frozen=True)
class PredictJob:
    """One slide and where its outputs go."""

    slide: Path
    out: Path
    probabilities: Path | None = None
    geojson: Path | None = None
    overlay: Path | None = None

    def outputs(self) -> list[Path]:
        return [p for p in (self.out, self.probabilities, self.geojson, self.overlay) if p]


@dataclass
class PredictResult:
    slide: Path
    out: Path
    status: str  # "predicted", "resumed", "skipped" or "failed"
    n_grid: int = 0
    n_predicted: int = 0
    bands_reused: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    exc: BaseException | None = field(default=None, repr=False)


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def predict(jobs: Sequence[PredictJob], config: PredictConfig) -> list[PredictResult]:
    """Predict every job. Bad settings or checkpoints raise; a failing slide is reported and
    the others go on."""
    validate(config, jobs)
    predictor = Predictor(config)
    results = []
    for job in jobs:
        try:
            results.append(predict_slide(predictor, job, config))
        except MsnError as exc:
            results.append(PredictResult(job.slide, job.out, "failed", error=str(exc), exc=exc))
    return results


def validate(config: PredictConfig, jobs: Sequence[PredictJob]) -> None:
    if config.batch_size < 1:
        raise MsnUsageError("--batch-size", f"{config.batch_size} is not a positive number")
    if not 0.0 <= config.min_tissue <= 1.0:
        raise MsnUsageError("--min-tissue", f"{config.min_tissue} is not a fraction in [0, 1]")
    if config.branch is not None and config.branch not in BRANCH_CHOICES:
        raise MsnUsageError("--branch", f"{config.branch!r} is not one of fusion, x1, x2, x3")
    if config.mpp is not None and config.mpp <= 0:
        raise MsnUsageError("--mpp", "must be a positive number of microns per pixel")
    if config.geojson_frame not in ("qupath", "level0"):
        raise MsnUsageError("--geojson-frame", "expected qupath or level0")
    seen: dict[Path, Path] = {}
    for job in jobs:
        for p in job.outputs():
            key = p.resolve()
            if key in seen:
                raise MsnUsageError(p, f"written twice (for {seen[key]} and {job.slide})")
            seen[key] = job.slide
            check_writable(p)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written."""
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise MsnError(path, "is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MsnError(path, f"cannot write here: {exc.strerror or exc}") from None


class Predictor:
    """The checkpoint, loaded once, and the output that becomes the mask."""

    def __init__(self, config: PredictConfig) -> None:
        import torch

        from msn_cli.inference import available_outputs
        from msn_cli.runtime import configure_threads, resolve_device

        ck = CheckpointDir(config.checkpoints)
        card = ck.read_card()
        if int(card.model.get("num_classes", -1)) != len(card.classes):
            raise MsnError(ck.model_json, "class names and num_classes disagree")
        if config.classes is not None and [c.lower() for c in config.classes] != [
            c.lower() for c in card.classes
        ]:
            raise MsnError(
                ck.path,
                f"trained for classes {', '.join(card.classes)}, not {', '.join(config.classes)}",
            )
        ck.require("meta")
        self.device = resolve_device(config.device)
        configure_threads(self.device)
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        try:
            self.model, self.stages = ck.load_model(self.device)
        except MsnError as exc:  # torch's load_state_dict message spans many lines
            text = " ".join(exc.message.split())
            raise MsnError(None, text if len(text) < 400 else text[:397] + "...") from exc
        outputs = available_outputs(self.stages, card.input)
        branch = config.branch or ("fusion" if "fusion" in outputs else outputs[0])
        if branch not in outputs:
            raise MsnError(
                ck.path,
                f"--branch {branch}: this checkpoint predicts {', '.join(outputs)} "
                f"(finished stages: {', '.join(self.stages)})",
            )
        self.card, self.branch, self.amp = card, branch, config.amp
        self.classes = list(card.classes)
        self.patch_size = card.patch_size
        h = hashlib.sha256(ck.model_json.read_bytes())
        for name in self.stages:
            h.update(f"{name}:{fingerprint(ck.stage(name).weights)};".encode())
        self.key = h.hexdigest()[:32]

    def __call__(self, xs: Sequence[np.ndarray], probabilities: bool):
        """uint8 triplets ``(n, P, P, 3)`` -> labels ``(n, P, P)`` uint8 in X1's frame and,
        when asked, softmax probabilities ``(n, C, P, P)`` float16."""
        import torch

        from msn_cli.inference import run_branches
        from msn_cli.runtime import autocast, to_input

        p = self.patch_size
        with torch.inference_mode(), autocast(self.device, self.amp):
            ts = [
                to_input(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), self.device)
                for x in xs
            ]
            logits = run_branches(self.model, self.stages, self.card, *ts, outputs=(self.branch,))[
                self.branch
            ]
            if self.branch in ("x2", "x3"):
                logits = self.model.align(logits, self.branch, (p, p))
            if tuple(logits.shape[-2:]) != (p, p):
                raise MsnError(None, f"model output {tuple(logits.shape)} is not {p}x{p}")
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            probs = logits.float().softmax(1).half().cpu().numpy() if probabilities else None
        return labels, probs


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


class BandStore:
    """``<out>.partial/``: one file per finished band, and the job key they belong to.

    ``bandNNNNNN.labels.zst`` (zstd of an ``.npy``) is written last, atomically: its presence
    is the record that the band is finished (``.probs.zst`` beside it when probabilities were
    asked for; ``.empty`` for a band without tissue).
    """

    def __init__(self, path: Path, key: dict) -> None:
        self.path = path
        meta = path / "job.json"
        old = None
        if meta.is_file():
            try:
                old = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
        if old != key and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if old != key:
            atomic_write_json(meta, key)

    def _file(self, r: int, kind: str) -> Path:
        return self.path / f"band{r:06d}.{kind}"

    def done(self, r: int) -> bool:
        return self._file(r, "labels.zst").is_file() or self._file(r, "empty").is_file()

    def save(self, r: int, labels: np.ndarray | None, probs: np.ndarray | None) -> None:
        if labels is None:
            atomic_write_bytes(self._file(r, "empty"), b"")
            return
        if probs is not None:
            atomic_write_bytes(self._file(r, "probs.zst"), _pack(probs))
        atomic_write_bytes(self._file(r, "labels.zst"), _pack(labels))

    def labels(self, r: int, rows: int, width: int) -> np.ndarray:
        if self._file(r, "empty").is_file():
            return np.zeros((rows, width), np.uint8)
        return _unpack(self._file(r, "labels.zst"))

    def probs(self, r: int, shape: tuple[int, int, int]) -> np.ndarray:
        if self._file(r, "empty").is_file():
            out = np.zeros(shape, np.float16)
            out[0] = 1.0
            return out
        return _unpack(self._file(r, "probs.zst"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _pack(arr: np.ndarray) -> bytes:
    import imagecodecs

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return imagecodecs.zstd_encode(buf.getvalue(), level=1)


def _unpack(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        return np.load(io.BytesIO(imagecodecs.zstd_decode(path.read_bytes())), allow_pickle=False)
    except Exception as exc:
        raise MsnError(path, f"corrupt partial band ({exc}); delete the folder and rerun") from exc


def predict_slide(predictor: Predictor, job: PredictJob, config: PredictConfig) -> PredictResult:
    """Predict one slide (see the module docstring)."""
    t0 = time.perf_counter()
    slide = open_slide(job.slide)
    try:
        return _predict_open(predictor, job, config, slide, t0)
    finally:
        slide.close()


def _predict_open(predictor, job, config, slide, t0) -> PredictResult:
    w0, h0 = slide.dimensions
    base = base_downsample(slide, config.mpp)
    p = predictor.patch_size
    geometry = PatchGeometry.create(p, Levels(predictor.card.magnifications), base)
    corners = geometry.grid(w0, h0)
    ncols = len(np.unique(corners[:, 0]))
    nrows = len(corners) // ncols
    d = config.probabilities_downsample
    key = {
        "format": FORMAT_VERSION,
        "slide": fingerprint(job.slide),
        "checkpoint": predictor.key,
        "branch": predictor.branch,
        "min_tissue": config.min_tissue,
        "base_downsample": base,
        "amp": predictor.amp,
    }
    mask_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    result = PredictResult(job.slide, job.out, "predicted", n_grid=len(corners))
    result.megapixels = w0 * h0 / 1e6
    desc = read_description(job.out) if job.out.is_file() else None
    probs_ok = job.probabilities is None or _zarr_key(job.probabilities) == mask_key
    if desc is not None and desc.get("key") == mask_key and probs_ok:
        _extras(job, config, slide, predictor, job.out, only_missing=True)
        result.status = "skipped"
        result.seconds = time.perf_counter() - t0
        log.info("%s: already predicted into %s, skipped", job.slide, job.out)
        return result

    xs_axis = Axis.create(corners[:ncols, 0], w0, base, p, d)
    ys_axis = Axis.create(corners[::ncols, 1], h0, base, p, d)
    store = BandStore(partial_dir(job.out), {**key, "probabilities": job.probabilities and d})
    try:
        todo_rows = [r for r in range(nrows) if not store.done(r)]
        result.bands_reused = nrows - len(todo_rows)
        if result.bands_reused:
            result.status = "resumed"
        result.n_predicted = _run_bands(
            predictor, job, config, geometry, corners, ncols, xs_axis, ys_axis, store, todo_rows
        )
        _assemble(predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d)
    except MsnError:
        store.remove()  # bad input: leave nothing behind (a kill keeps the bands)
        raise
    store.remove()
    result.seconds = time.perf_counter() - t0
    return result


def _zarr_key(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        import zarr

        return zarr.open_array(str(path), mode="r").attrs.get("key")
    except Exception:
        return None


def _run_bands(
    predictor, job, config, geometry, corners, ncols, xs_axis, ys_axis, store, todo_rows
) -> int:
    """Predict the tissue patches of ``todo_rows`` and save each band; returns patches run."""
    slide = cached_slide(job.slide)
    footprint = geometry.footprint
    if config.min_tissue > 0:
        ds_t = thumbnail_downsample(footprint)
        fractions = patch_fractions(thumbnail_mask(slide, ds_t), ds_t, corners, footprint)
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
    want_probs = job.probabilities is not None
    painter = BandPainter(
        store, todo_rows, ncols, xs_axis, ys_axis, len(predictor.classes), want_probs
    )
    workers = config.workers or os.cpu_count() or 1

    def work(i: int):
        return extract(cached_slide(job.slide), geometry, centres[units[i]]).x

    w0 = int(xs_axis.stop[-1])
    pending: deque = deque()
    buf_idx: list[np.ndarray] = []
    buf_x: list[list[np.ndarray]] = [[], [], []]
    n_run = 0
    name = job.slide.name
    with (
        ThreadPoolExecutor(workers) as pool,
        progress(name, len(corners), "patches") as bar,
    ):
        t_start = time.perf_counter()

        def on_band(r: int) -> None:
            mpx = painter.rows_done * w0 / 1e6
            bar.advance(ncols, Mpx_s=f"{mpx / (time.perf_counter() - t_start + 1e-9):.1f}")

        painter.on_band = on_band
        next_unit = 0

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

        while next_unit < len(units) or pending:
            while next_unit < len(units) and len(pending) < 2 * workers:
                pending.append((next_unit, pool.submit(work, next_unit)))
                next_unit += 1
            i, fut = pending.popleft()
            xs = fut.result()
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


def _assemble(predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d) -> None:
    """Every band is saved: write the TIFF and the extras under temporary names, rename."""
    w0, h0 = slide.dimensions
    nrows = len(ys_axis.pos)

    def blocks():
        for r in range(nrows):
            yield store.labels(r, int(ys_axis.stop[r] - ys_axis.start[r]), w0)

    tmp = job.out.with_name(f".{job.out.name}.tmp{os.getpid()}")
    description = {
        "classes": predictor.classes,
        "source": str(job.slide),
        "branch": predictor.branch,
        "key": mask_key,
        "overlap": "later patch wins",
    }
    probs_writer = None
    try:
        write_mask_tiff(tmp, w0, h0, blocks, mpp=slide.mpp, description=description)
        if job.probabilities is not None:
            from msn_cli.io.export import ProbabilityWriter

            probs_writer = ProbabilityWriter(
                job.probabilities, (w0, h0), d, predictor.classes, {"key": mask_key}
            )
            cw = xs_axis.coarse[-1].stop
            for r in range(nrows):
                n = ys_axis.coarse[r].stop - ys_axis.coarse[r].start
                probs_writer.append(store.probs(r, (len(predictor.classes), n, cw)))
            probs_writer.commit()
            probs_writer = None
        _extras(job, config, slide, predictor, tmp, only_missing=False)
        os.replace(tmp, job.out)
    finally:
        if probs_writer is not None:
            probs_writer.discard()
        if tmp.exists():
            tmp.unlink()


def _extras(job, config, slide, predictor, mask: Path, only_missing: bool) -> None:
    """GeoJSON and overlay, derived from the written mask's pyramid."""
    from msn_cli.io.annotations import write_geojson
    from msn_cli.io.export import trace_polygons, write_overlay
    from msn_cli.palette import class_color

    w0, h0 = slide.dimensions
    if job.geojson is not None and not (only_missing and job.geojson.exists()):
        labels, ds = read_level(mask, config.trace_max_side)
        offset = qupath_offset(slide) if config.geojson_frame == "qupath" else (0, 0)
        polys = trace_polygons(labels, ds, predictor.classes, (w0, h0), offset=offset)
        colours = {name: class_color(k) for k, name in enumerate(predictor.classes)}
        write_geojson(job.geojson, polys, colours)
    if job.overlay is not None and not (only_missing and job.overlay.exists()):
        labels, ds = read_level(mask, config.overlay_max_side)
        thumb = read_scaled(slide, 0.0, 0.0, float(ds), labels.shape[1], labels.shape[0])
        write_overlay(job.overlay, thumb, labels, predictor.classes)


def qupath_offset(slide) -> tuple[int, int]:
    """Where QuPath's image origin lies in level-0 pixels.

    QuPath's OpenSlide server crops a slide to ``openslide.bounds-*`` when all four are present
    and both width and height differ from level 0 (``OpenslideImageServer``), so its
    coordinates are level-0 coordinates minus ``(bounds-x, bounds-y)``. Other readers: (0, 0).
    """
    osr = getattr(slide, "_osr", None)
    props = dict(osr.properties) if osr is not None else {}
    names = [f"openslide.bounds-{k}" for k in ("x", "y", "width", "height")]
    if not all(n in props for n in names):
        return 0, 0
    try:
        bx, by, bw, bh = (int(props[n]) for n in names)
    except ValueError:
        return 0, 0
    w0, h0 = slide.dimensions
    return (bx, by) if bw != w0 and bh != h0 else (0, 0)

"""Opening slides: every OpenSlide format, OME-TIFF and other TIFFs through tifffile, and plain
images (JPEG, PNG, ...) with a virtual pyramid.

All readers share one small interface, :class:`Slide` (levels, mpp, ``read_level`` of a box
inside a level); :func:`open_slide` picks the reader. Reading a level-0 box at any downsample,
fingerprints and per-thread handles are in :mod:`msn_cli.io.slide`, the module to import.

Transparent pixels inside the image (unscanned areas of some formats) are white.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError

#: A pyramid level is used for a target downsample when its own downsample is at most this much
#: coarser than the target (scanners round: 4.016 for 4), so we never decode a 16x finer level for
#: a 0.4% difference. The remaining difference is resampled exactly.
LEVEL_TOLERANCE = 1.02

#: Our own limit on the pixels of a plain (non-tiled) image, which must be decoded whole.
#: Pillow's decompression-bomb guard (89 Mpx) would refuse legitimate large photographs; ours is
#: 1 Gpx (3 GiB of RGB), beyond which an image must come as a tiled TIFF.
MAX_PLAIN_IMAGE_PIXELS = 1 << 30

#: The most pixels of one TIFF tile or strip, which is decoded whole like a plain image; a header
#: claiming more (a damaged or hostile file) is refused before anything is decoded.
MAX_TIFF_BLOCK_PIXELS = MAX_PLAIN_IMAGE_PIXELS

PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}


@dataclass(frozen=True)
class LevelInfo:
    """Size and level-0 downsample (per axis) of one pyramid level."""

    width: int
    height: int
    downsample_x: float
    downsample_y: float


class Slide:
    """A multi-resolution image. Subclasses implement :meth:`read_level`."""

    path: Path
    levels: list[LevelInfo]
    mpp: float | None
    vendor: str
    #: The scanner's objective magnification (OpenSlide's ``openslide.objective-power``).
    objective_power: float | None = None
    #: Names of the label, macro and thumbnail images stored beside the pyramid.
    associated: tuple[str, ...] = ()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of a box in *level* pixels, inside the level bounds.

        May be a read-only view; callers copy what they keep."""
        raise NotImplementedError

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (within tolerance)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if max(lv.downsample_x, lv.downsample_y) <= downsample * LEVEL_TOLERANCE:
                best = i
        return best

    def close(self) -> None:  # pragma: no cover - trivial
        pass


class OpenSlideSlide(Slide):
    """Any format OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...)."""

    def __init__(self, path: Path, osr) -> None:
        self.path = path
        self._osr = osr
        self.vendor = osr.properties.get("openslide.vendor", "openslide")
        w0, h0 = osr.level_dimensions[0]
        self.levels = [LevelInfo(w, h, w0 / w, h0 / h) for (w, h) in osr.level_dimensions]
        self._ds = [float(d) for d in osr.level_downsamples]
        self.mpp = _positive(osr.properties.get("openslide.mpp-x"))
        self.objective_power = _positive(osr.properties.get("openslide.objective-power"))
        self.associated = tuple(osr.associated_images)

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        import openslide

        # OpenSlide takes the location in level-0 pixels and divides by its own downsample.
        ds = self._ds[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        try:
            rgba = _read_rgba(self._osr, loc, level, width, height)
        except openslide.OpenSlideError as exc:
            raise MsnError(self.path, f"cannot decode level {level} at {loc}: {exc}") from exc
        rgb = rgba[..., :3]  # a view: the consumer makes the one copy it needs
        alpha = rgba[..., 3]
        if not alpha.all():  # unscanned areas are transparent: white, like glass
            rgb = rgb.copy()
            rgb[alpha == 0] = 255
        return rgb

    def close(self) -> None:
        self._osr.close()


class TiffSlide(Slide):
    """OME-TIFF and other TIFFs that OpenSlide does not open, read lazily through tifffile."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self.path = path
        self.vendor = "tifffile"
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        self._axes = series.axes
        self._arrays = []
        store = series.aszarr()
        root = zarr.open(store, mode="r")
        arrays = [root] if hasattr(root, "shape") else [root[str(i)] for i in range(len(root))]
        for i, (arr, lvl) in enumerate(zip(arrays, series.levels, strict=False)):
            block = [n for n, ax in zip(arr.chunks, lvl.axes, strict=False) if ax in "YX"]
            if math.prod(block) > MAX_TIFF_BLOCK_PIXELS:
                raise MsnError(
                    path,
                    f"level {i} is stored in blocks of {'x'.join(map(str, block))} pixels, "
                    "too large to decode; convert it to a tiled pyramidal TIFF",
                )
            self._arrays.append((arr, lvl.axes))
        self.levels = []
        w0 = h0 = None
        for arr, axes in self._arrays:
            h, w = arr.shape[axes.index("Y")], arr.shape[axes.index("X")]
            if w0 is None:
                w0, h0 = w, h
            self.levels.append(LevelInfo(w, h, w0 / w, h0 / h))
        if "S" not in self._axes and "C" not in self._axes:
            raise MsnError(path, f"unsupported TIFF layout {self._axes!r}: expected RGB samples")
        self.mpp = _tiff_mpp(self._tif.pages[0])

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        arr, axes = self._arrays[level]
        index = []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y, y + height))
            elif ax == "X":
                index.append(slice(x, x + width))
            elif ax in "SC":
                index.append(slice(0, 3))
            else:
                index.append(0)
        try:
            data = np.asarray(arr[tuple(index)])
        except Exception as exc:  # decoder errors come in many types
            why = str(exc) or type(exc).__name__
            raise MsnError(self.path, f"cannot decode level {level}: {why}") from exc
        kept = [ax for ax in axes if ax in "YXSC"]
        order = [kept.index("Y"), kept.index("X"), kept.index("S" if "S" in kept else "C")]
        data = np.transpose(data, order)
        return _to_uint8_rgb(data, self.path)

    def close(self) -> None:
        self._tif.close()


class ImageSlide(Slide):
    """A plain image decoded whole, with a virtual pyramid made by resampling on demand."""

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path = path
        self.vendor = "image"
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PLAIN_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():  # our own cap speaks instead (one line)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            with img:
                w, h = img.size
                if w * h > MAX_PLAIN_IMAGE_PIXELS:  # before decoding: Pillow only warns below 2x
                    raise Image.DecompressionBombError(f"{w}x{h}")
                self._pixels = _plain_rgb(img)
                dpi = img.info.get("dpi")
        except Image.DecompressionBombError as exc:
            raise MsnError(
                path,
                f"image has more than {MAX_PLAIN_IMAGE_PIXELS} pixels; convert it to a tiled "
                "pyramidal TIFF",
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise MsnError(path, f"cannot decode image: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
        self.levels = [LevelInfo(w, h, 1.0, 1.0)]
        self.mpp = _dpi_to_mpp(dpi)

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width]


def _read_rgba(osr, loc: tuple[int, int], level: int, width: int, height: int) -> np.ndarray:
    """OpenSlide's ``read_region`` as an RGBA array, decoded straight into numpy memory.

    The same C calls as openslide-python's ``read_region`` (``openslide_read_region``, then its
    own ARGB-to-RGBA conversion), without the PIL image and the copy out of it: a quarter of
    the time of reading a region on top of decoding it.
    """
    import ctypes

    from openslide import _convert, lowlevel

    if width <= 0 or height <= 0:
        return np.zeros((max(height, 0), max(width, 0), 4), np.uint8)
    buf = np.empty((height, width), dtype=np.uint32)
    ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
    lowlevel._read_region(osr._osr, ptr, loc[0], loc[1], level, width, height)
    _convert.argb2rgba(buf)
    return buf.view(np.uint8).reshape(height, width, 4)


def _plain_rgb(img) -> np.ndarray:
    """RGB uint8 of a plain image. Pillow's ``convert("RGB")`` clips 16- and 32-bit grey to 255
    (a 16-bit PNG turns white): those are scaled to 8 bits instead."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = np.asarray(img).astype(np.float64)
        peak = float(grey.max()) if grey.size else 0.0
        # 16-bit modes span 0..65535; 32-bit ones hold 8- or 16-bit data, or their own range
        top = 65535.0 if img.mode.startswith("I;16") or 255 < peak <= 65535 else max(peak, 255.0)
        grey8 = np.clip(np.rint(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def open_slide(path: str | os.PathLike[str]) -> Slide:
    """Open ``path`` with the first reader that supports it, or raise a one-line MsnError."""
    p = Path(path)
    if not p.exists():
        raise MsnError(p, "no such file")
    if p.is_file() and p.stat().st_size == 0:
        raise MsnError(p, "file is empty")
    suffix = p.suffix.lower()
    name = p.name.lower()
    if suffix in PLAIN_SUFFIXES:
        return ImageSlide(p)
    is_ome = name.endswith((".ome.tif", ".ome.tiff"))
    if not is_ome:
        import openslide

        try:
            fmt = openslide.OpenSlide.detect_format(str(p))
        except openslide.OpenSlideError as exc:
            raise MsnError(p, f"OpenSlide cannot read it: {exc}") from exc
        if fmt is not None:
            try:
                return OpenSlideSlide(p, openslide.OpenSlide(str(p)))
            except openslide.OpenSlideError as exc:
                raise MsnError(p, f"OpenSlide cannot open it ({fmt}): {exc}") from exc
    if suffix in TIFF_SUFFIXES:
        try:
            return TiffSlide(p)
        except MsnError:
            raise
        except Exception as exc:
            raise MsnError(p, f"not a readable TIFF: {exc}") from exc
    raise MsnError(p, "not a slide format msn can open (OpenSlide formats, TIFF, JPEG, PNG)")


def _positive(value) -> float | None:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def _tiff_mpp(page) -> float | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    if not num or not den:
        return None
    per_unit = num / den
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit))
    return _positive(microns / per_unit) if microns else None


def _dpi_to_mpp(dpi) -> float | None:
    if not dpi:
        return None
    try:
        return _positive(25400.0 / float(dpi[0]))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _to_uint8_rgb(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data[..., :3])
    if data.dtype == np.uint16:
        return np.ascontiguousarray((data[..., :3] >> 8).astype(np.uint8))
    raise MsnError(path, f"unsupported pixel type {data.dtype}: expected 8- or 16-bit RGB")

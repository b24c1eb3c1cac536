"""Label masks (PNG or TIFF images of class values) as a :class:`LabelSource`.

A mask is at the slide's level-0 size or at any (not necessarily integer) downsample of it; the
downsample is inferred per axis from the sizes and both axes must agree within 1 %. Mask pixel
``(i, j)`` covers the level-0 area ``[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)``; output
pixels take the mask pixel under their centre (nearest neighbour).

PNGs are read whole (they are photograph-sized): Pillow's decompression-bomb guard is lifted up to
:data:`MAX_MASK_PIXELS` and anything bigger is refused. TIFFs (tiled, stripped or pyramidal, any
codec imagecodecs decodes) are read lazily through tifffile's Zarr store
(:class:`~msn_cli.io.maskreader.TiffMask`): a region reads only the tiles it touches, from
level 0 of the pyramid. JPEG is refused: lossy compression invents labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.maskreader import TiffMask
from msn_cli.io.rasterise import _check_region, inside_image, match_class
from msn_cli.vocab import IGNORE

MAX_MASK_PIXELS = 2**31
"""Largest PNG mask (in pixels) read whole; bigger masks must be tiled TIFFs."""

MASK_SUFFIXES = (".png", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_LUT_SIZE = 1 << 16  # raw mask values 0..65535 are mappable


def parse_mask_values(
    text: str, classes: Sequence[str], aliases: dict[str, str] | None = None
) -> dict[int, int]:
    """Parse ``--mask-values`` text ``RAW:CLASS[,RAW:CLASS...]`` into ``{raw: class index}``.

    CLASS is a class name (matched like annotation classes), a class index, or ``ignore`` (255).

    Example:
        >>> parse_mask_values("0:normal, 255:invasive", ["normal", "benign", "in situ", "invasive"])
        {0: 0, 255: 3}
    """
    out: dict[int, int] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        raw_s, sep, cls = item.partition(":")
        try:
            raw = int(raw_s.strip())
        except ValueError:
            raw = -1
        if not sep or not 0 <= raw < _LUT_SIZE or not cls.strip():
            raise MsnUsageError(
                "--mask-values", f"bad item {item!r} (expected RAW:CLASS, e.g. 0:normal,255:tumour)"
            )
        if raw in out:
            raise MsnUsageError("--mask-values", f"raw value {raw} given twice")
        cls = cls.strip()
        if cls.casefold() == "ignore":
            out[raw] = IGNORE
        elif cls.isdigit():
            if int(cls) >= len(classes):
                raise MsnUsageError(
                    "--mask-values", f"class index {cls} out of range 0..{len(classes) - 1}"
                )
            out[raw] = int(cls)
        else:
            out[raw] = match_class(cls, classes, aliases, "--mask-values", usage=True)
    if not out:
        raise MsnUsageError("--mask-values", "no RAW:CLASS pairs given")
    return out


class MaskLabels:
    """A :class:`LabelSource` backed by a label-mask image.

    ``values`` maps raw mask values to class indices (see :func:`parse_mask_values`); any raw
    value present and not in ``values`` is an error, 255 included (map it: ``255:ignore``). Without
    ``values`` raw values are class indices, and with ``num_classes`` values ``>= num_classes``
    other than 255 are an error (raised at open for PNG, at the first region touching them for
    TIFF). Instances pickle (the TIFF is reopened lazily in the receiving process).

    Example:
        >>> values = {0: 0, 255: 1}  # doctest: +SKIP
        >>> labels = MaskLabels("m.png", (40000, 30000), values, num_classes=2)  # doctest: +SKIP
        >>> labels.downsample  # doctest: +SKIP
        (16.0, 16.0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: tuple[int, int],
        values: dict[int, int] | None = None,
        *,
        num_classes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.values = None if values is None else dict(values)
        self.num_classes = num_classes
        self._lut, self._valid = self._build_lut()
        self._labels: np.ndarray | None = None  # PNG: whole mask, already mapped to classes
        self._mask: TiffMask | None = None  # TIFF: opened at once, reopened lazily (pickles)
        suffix = self.path.suffix.lower()
        if suffix in LOSSY_SUFFIXES:
            raise MsnError(
                path,
                "JPEG label masks are refused: lossy compression changes labels "
                "(save the mask as PNG or TIFF)",
            )
        if suffix not in MASK_SUFFIXES:
            raise MsnError(path, f"unsupported label mask type {suffix!r} (use .png, .tif, .tiff)")
        if not self.path.is_file():
            raise MsnError(path, "label mask not found")
        if suffix == ".png":
            raw = self._read_png()
            self.mask_size = (raw.shape[1], raw.shape[0])
            self._labels = self._map(raw)
        else:
            self._open_tiff()
        try:
            self.downsample = self._check_size()
        except MsnError:
            self.close()
            raise

    # -- reading -------------------------------------------------------------------------------
    def _read_png(self) -> np.ndarray:
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own cap below, deliberately
        try:
            with Image.open(self.path) as im:
                w, h = im.size
                if w * h > MAX_MASK_PIXELS:
                    raise MsnError(
                        self.path,
                        f"PNG mask of {w}x{h} pixels exceeds the "
                        f"{MAX_MASK_PIXELS}-pixel limit; save it as a tiled TIFF",
                    )
                if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise MsnError(
                        self.path,
                        f"label mask must be single-channel class values "
                        f"(greyscale or palette), got mode {im.mode}",
                    )
                return np.asarray(im)
        except MsnError:
            raise
        except Exception as e:
            raise MsnError(self.path, f"cannot read PNG mask: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old

    def _open_tiff(self) -> None:
        try:
            mask = TiffMask(self.path)
        except Exception as e:
            raise MsnError(self.path, f"cannot read TIFF mask: {e}") from None
        try:
            series = mask.series
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            layouts = {2: "yx", 3: "yx1" if shape[-1] == 1 else "1yx" if shape[0] == 1 else ""}
            layout = layouts.get(len(shape), "")
            if not layout:
                raise MsnError(
                    self.path, f"label mask must be a single-channel 2-D image, got shape {shape}"
                )
            if dtype.kind not in "uib":
                raise MsnError(self.path, f"label mask must hold integers, got {dtype}")
            mask.open_pixels((1, 2) if layout == "1yx" else (0, 1))
        except MsnError:
            mask.close()
            raise
        except Exception as e:
            mask.close()
            raise MsnError(self.path, f"cannot read TIFF mask: {e}") from None
        self._mask = mask
        yx = shape[1:] if layout == "1yx" else shape[:2]
        self.mask_size = (int(yx[1]), int(yx[0]))

    def _read_window(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self._mask is None:
            self._open_tiff()
        return self._mask.read(rows, cols)

    def close(self) -> None:
        if self._mask is not None:
            self._mask.close()
        self._mask = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mask"] = None
        return state

    # -- values --------------------------------------------------------------------------------
    def _build_lut(self) -> tuple[np.ndarray, np.ndarray]:
        lut = np.zeros(_LUT_SIZE, dtype=np.uint8)
        valid = np.zeros(_LUT_SIZE, dtype=bool)
        if self.values is None:
            n = 255 if self.num_classes is None else min(int(self.num_classes), 255)
            lut[:256] = np.arange(256)
            valid[:n] = True
        else:
            n = 255 if self.num_classes is None else int(self.num_classes)
            for raw, cls in self.values.items():
                if not (0 <= raw < _LUT_SIZE and (0 <= cls < n or cls == IGNORE)):
                    raise MsnError(self.path, f"bad mask value mapping {raw}:{cls}")
                lut[raw], valid[raw] = cls, True
        # Raw class indices: 255 is ignore. With --mask-values every raw value present must be
        # mapped, 255 too (``255:ignore``): a partial map is a mistake, refused like any other.
        if self.values is None:
            lut[IGNORE], valid[IGNORE] = IGNORE, True
        return lut, valid

    def _map(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.dtype == bool:
            raw = raw.astype(np.uint8)
        if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
            idx = raw
        else:
            idx = np.where((raw >= 0) & (raw < _LUT_SIZE), raw, 0).astype(np.int64)
            bad = (raw < 0) | (raw >= _LUT_SIZE)
            if bad.any():
                self._bad_value(int(raw[bad].flat[0]))
        ok = self._valid[idx]
        if not ok.all():
            self._bad_value(int(idx[~ok].flat[0]))
        return self._lut[idx]

    def _bad_value(self, v: int) -> None:
        if self.values is not None:
            known = ", ".join(str(k) for k in sorted(self.values))
            raise MsnError(
                self.path,
                f"mask value {v} is not in --mask-values (mapped: {known}); map it, "
                f"e.g. {v}:ignore",
            )
        top = 254 if self.num_classes is None else self.num_classes - 1
        raise MsnError(
            self.path,
            f"mask value {v} is not a class index (classes 0..{top}, 255 = ignore); "
            "map raw values with --mask-values",
        )

    def _check_size(self) -> tuple[float, float]:
        (w, h), (mw, mh) = self.image_size, self.mask_size
        if mw <= 0 or mh <= 0:
            raise MsnError(self.path, "label mask is empty")
        sx, sy = w / mw, h / mh
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise MsnError(
                self.path,
                f"mask is {mw}x{mh} but slide is {w}x{h} (not the slide's shape at any downsample)",
            )
        return sx, sy

    # -- LabelSource ---------------------------------------------------------------------------
    def region(
        self, x0: float, y0: float, downsample: float, height: int, width: int
    ) -> np.ndarray:
        _check_region(downsample, height, width)
        out = np.full((height, width), IGNORE, dtype=np.uint8)
        rows, cols = inside_image(self.image_size, x0, y0, downsample, height, width)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return out
        (sx, sy), (mw, mh) = self.downsample, self.mask_size
        ys = y0 + (np.arange(rows.start, rows.stop) + 0.5) * downsample
        xs = x0 + (np.arange(cols.start, cols.stop) + 0.5) * downsample
        mr = np.clip(np.floor(ys / sy).astype(np.int64), 0, mh - 1)
        mc = np.clip(np.floor(xs / sx).astype(np.int64), 0, mw - 1)
        if self._labels is not None:
            out[rows, cols] = self._labels[np.ix_(mr, mc)]
            return out
        ur, ir = np.unique(mr, return_inverse=True)
        uc, ic = np.unique(mc, return_inverse=True)
        window = self._map(self._read_window(ur, uc))
        out[rows, cols] = window[np.ix_(ir, ic)]
        return out

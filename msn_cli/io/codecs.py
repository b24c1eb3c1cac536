"""How the patch store compresses its chunks: one :class:`ChunkCodec` per array.

Images are compressed lossily by default: JPEG, where ``jpeg`` without a quality means
*auto*: a branch image copied from a JPEG pyramid level on its block grid is re-encoded at
that level's own quality (at least :data:`COPY_MIN_QUALITY`), any other at
:data:`FRESH_QUALITY`, so the stored pixels stay within 40 dB PSNR of the decoded slide.
``--lossless`` stores exact pixels (zstd, or lossless JPEG-XL); labels are always lossless
(zstd). The chunks are encoded here, by ``tile``'s worker threads, and the array's Zarr
metadata names the same codec, so any zarr-python reader decodes them. JPEG has no codec in
the Zarr v3 core: ``msn.image`` (:mod:`msn_cli.io.zarr_codec`) is registered with zarr
through the ``zarr.codecs`` entry point of the ``msn-cli`` package, so zarr-python opens a
store's images in any environment where msn is installed.

Example:
    >>> c = ChunkCodec.parse("jpeg:90")
    >>> c.name, c.level, c.lossless
    ('jpeg', 90, False)
    >>> chunk = np.zeros((16, 16, 3), np.uint8)
    >>> c.decode(c.encode(chunk), chunk.shape).shape
    (16, 16, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msn_cli.errors import MsnUsageError

#: Lossy image codecs (``msn.image``) and their quality ranges.
LOSSY = {"jpeg": (1, 100)}
#: Lossless codecs: zstd is Zarr's own; ``jpegxl`` (lossless mode) is ``msn.image``.
LOSSLESS = {"zstd": (1, 22), "jpegxl": (1, 9)}
DEFAULT_LOSSY = "jpeg"  # auto quality
#: JPEG quality of image content that is not a block-aligned copy of a JPEG level.
FRESH_QUALITY = 95
#: The least JPEG quality of a block-aligned copy of a JPEG level (its own quality if higher):
#: re-encoding a q30 scan at q30 costs 9 dB, since scanners' tables and chroma subsampling differ
#: from ours (README, "The patch store").
COPY_MIN_QUALITY = 90
DEFAULT_LOSSLESS = "zstd:3"
LABEL_CODEC = "zstd:1"
SUBSAMPLING = ("444", "422", "420")


@dataclass(frozen=True)
class ChunkCodec:
    """A chunk compression: ``name`` and ``level`` (JPEG quality, zstd level, JPEG-XL effort);
    a JPEG ``level`` of None is *auto*, resolved per branch image by :meth:`resolve`. JPEG's
    ``subsampling`` is its chroma subsampling (``444``, ``422`` or ``420``)."""

    name: str
    level: int | None
    subsampling: str = "444"

    @property
    def lossless(self) -> bool:
        return self.name in LOSSLESS

    @classmethod
    def parse(cls, text: str) -> ChunkCodec:
        """``jpeg``, ``jpeg:95``, ``jpeg:90:420``, ``zstd:3``, ``jpegxl:1`` (the level after
        the colon; JPEG's chroma subsampling after a second one, 4:4:4 by default)."""
        name, _, level = text.strip().lower().partition(":")
        level, _, sub = level.partition(":")
        if sub and (name != "jpeg" or sub not in SUBSAMPLING):
            raise MsnUsageError(
                "--codec", f"{text!r}: only jpeg takes a subsampling ({', '.join(SUBSAMPLING)})"
            )
        ranges = {**LOSSY, **LOSSLESS}
        if name not in ranges:
            raise MsnUsageError(
                "--codec", f"unknown codec {name!r}; expected one of {list(ranges)}"
            )
        lo, hi = ranges[name]
        default = {"jpeg": None, "zstd": 3, "jpegxl": 1}[name]
        try:
            value = int(level) if level else default
        except ValueError:
            raise MsnUsageError("--codec", f"{text!r}: the level must be an integer") from None
        if value is not None and not lo <= value <= hi:
            raise MsnUsageError("--codec", f"{text!r}: {name}'s level must be in {lo}..{hi}")
        return cls(name, value, sub or "444")

    def __str__(self) -> str:
        text = self.name if self.level is None else f"{self.name}:{self.level}"
        return text if self.subsampling == "444" else f"{text}:{self.subsampling}"

    def resolve(self, source: tuple[int, str] | None) -> ChunkCodec:
        """Auto JPEG: for a block-aligned copy of a JPEG level (``source``: its quality and
        subsampling) that level's quality (at least :data:`COPY_MIN_QUALITY`) and subsampling,
        else :data:`FRESH_QUALITY` at 4:4:4; any other codec as it is."""
        if self.level is not None:
            return self
        if source is None:
            return ChunkCodec(self.name, FRESH_QUALITY)
        quality, subsampling = source
        return ChunkCodec(self.name, max(quality, COPY_MIN_QUALITY), subsampling)

    def encode(self, chunk: np.ndarray) -> bytes:
        """The bytes zarr stores for one whole chunk (C order)."""
        assert self.level is not None, "resolve an auto codec first"
        if self.name == "jpeg" and _in_rgba(chunk):
            return _jpeg_from_rgba(chunk, self.level, self.subsampling)
        return encode_chunk(self.name, self.level, np.ascontiguousarray(chunk), self.subsampling)

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return decode_chunk(self.name, data, shape)


def _in_rgba(chunk: np.ndarray) -> bool:
    """An RGB view whose pixels sit in RGBA memory (what OpenSlide's reads give)."""
    return (
        chunk.ndim == 3 and chunk.shape[-1] == 3 and chunk.dtype == np.uint8
        and chunk.strides[1:] == (4, 1)
    )  # fmt: skip


def _jpeg_from_rgba(chunk: np.ndarray, level: int, subsampling: str) -> bytes:
    """JPEG of an RGB view of RGBA memory, encoded from the RGBA bytes as they lie (libjpeg
    skips the fourth byte): the same bytes as from a contiguous RGB copy, without the copy,
    which cost as much as the encoding itself."""
    import imagecodecs

    rgba = np.lib.stride_tricks.as_strided(
        chunk, shape=(*chunk.shape[:2], 4), strides=chunk.strides, writeable=False
    )
    return imagecodecs.jpeg8_encode(
        rgba, level=level, subsampling=subsampling, colorspace="RGBA", outcolorspace="YCBCR"
    )


def image_codec(codec: str | None, lossless: bool) -> str:
    """``tile``'s image codec from ``--codec`` and ``--lossless`` (a usage error if they clash)."""
    if codec is None:
        return DEFAULT_LOSSLESS if lossless else DEFAULT_LOSSY
    parsed = ChunkCodec.parse(codec)
    if lossless and not parsed.lossless:
        raise MsnUsageError("--codec", f"{codec} is lossy; --lossless takes zstd or jpegxl")
    if parsed.name == "jpeg" and parsed.level is None:
        return DEFAULT_LOSSY
    return str(parsed)


def encode_chunk(name: str, level: int, chunk: np.ndarray, subsampling: str = "444") -> bytes:
    import imagecodecs

    if name == "zstd":
        return imagecodecs.zstd_encode(chunk.tobytes(), level=level)
    if name == "jpeg":
        return imagecodecs.jpeg8_encode(chunk, level=level, subsampling=subsampling)
    if name == "jpegxl":
        return imagecodecs.jpegxl_encode(chunk, lossless=True, effort=level)
    raise ValueError(f"unknown codec {name!r}")


def decode_chunk(name: str, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    import imagecodecs

    if name == "zstd":
        return np.frombuffer(imagecodecs.zstd_decode(data), np.uint8).reshape(shape)
    if name == "jpeg":
        out = imagecodecs.jpeg8_decode(data)
    elif name == "jpegxl":
        out = imagecodecs.jpegxl_decode(data)
    else:
        raise ValueError(f"unknown codec {name!r}")
    return out.reshape(shape)

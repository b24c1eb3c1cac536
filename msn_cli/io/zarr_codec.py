"""``msn.image``: the Zarr v3 array-to-bytes codec of the store's lossy (and JPEG-XL) images.

Registered with zarr when imported (:mod:`msn_cli.io.store` imports it) and through the
``zarr.codecs`` entry point of the ``msn-cli`` package, so plain zarr-python opens a store's
images wherever msn is installed. Chunks are (H, W, 3) uint8; the encoding is
:func:`msn_cli.io.codecs.encode_chunk`, the same function ``tile`` writes shards with.
:func:`zarr_codecs` gives the codecs of a store array from its :class:`ChunkCodec`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

from msn_cli.io.codecs import ChunkCodec, decode_chunk, encode_chunk

NAME = "msn.image"


class ImageCodec(ArrayBytesCodec):
    """``{"name": "msn.image", "configuration": {"format": "jpeg", "level": 90,
    "subsampling": "420"}}`` (the subsampling matters only when zarr itself writes)."""

    is_fixed_size = False

    def __init__(self, format: str = "jpeg", level: int = 90, subsampling: str = "444") -> None:
        object.__setattr__(self, "format", str(format))
        object.__setattr__(self, "level", int(level))
        object.__setattr__(self, "subsampling", str(subsampling))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageCodec:
        _, config = parse_named_configuration(data, NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        config = {"format": self.format, "level": self.level, "subsampling": self.subsampling}
        return {"name": NAME, "configuration": config}

    def evolve_from_array_spec(self, array_spec) -> ImageCodec:
        shape = tuple(array_spec.shape)
        if np.dtype(array_spec.dtype.to_native_dtype()) != np.uint8 or shape[-1:] != (3,):
            raise ValueError(f"{NAME} encodes (H, W, 3) uint8 chunks, not {shape}")
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageCodec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.format, self.level, self.subsampling))

    async def _decode_single(self, chunk_bytes, chunk_spec):
        arr = decode_chunk(self.format, chunk_bytes.to_bytes(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    async def _encode_single(self, chunk_array, chunk_spec):
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        data = encode_chunk(self.format, self.level, arr, self.subsampling)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError(f"{NAME} output sizes vary")


register_codec(NAME, ImageCodec)


def zarr_codecs(codec: ChunkCodec) -> dict[str, Any]:
    """``serializer`` and ``compressors`` for :meth:`zarr.Group.create_array` of an array whose
    chunks ``codec`` encodes (zstd: zarr's own; JPEG, JPEG-XL: :class:`ImageCodec`)."""
    from zarr.codecs import BytesCodec, ZstdCodec

    if codec.name == "zstd":
        return {"serializer": BytesCodec(), "compressors": ZstdCodec(level=codec.level)}
    image = ImageCodec(codec.name, codec.level, codec.subsampling)
    return {"serializer": image, "compressors": None}

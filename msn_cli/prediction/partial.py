"""``<out>.partial/``: the finished bands of a ``predict`` run, so a killed run resumes.

The folder holds ``job.json`` (the key of the job the bands belong to: slide, checkpoint,
branch, settings) and one set of files per finished band. A folder whose key differs from the
current job's is cleared before any band is written.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError
from msn_cli.io.atomic import atomic_write_bytes, atomic_write_json


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


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

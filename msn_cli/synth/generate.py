"""``msn synth``: a directory of synthetic slides (or photographs), annotations and a manifest."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnUsageError

KINDS = ("wsi", "photo")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("slide", "annotations", "split")


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, sub-train, test) counts: test and sub-train get ``max(1, n // 4)`` each.

    Example:
        >>> [split_counts(n) for n in (3, 4, 8, 10)]
        [(1, 1, 1), (2, 1, 1), (4, 2, 2), (6, 2, 2)]
    """
    if n < 3:
        raise ValueError("at least 3 slides are needed (train, sub-train, test)")
    k = max(1, n // 4)
    return n - 2 * k, k, k


def slide_seed(seed: int, index: int) -> int:
    """The seed of slide ``index`` of a run with ``seed`` (independent streams per slide)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate(
    out_dir: str | os.PathLike[str],
    slides: int = 4,
    size: int = 4096,
    seed: int = 0,
    kind: str = "wsi",
    patch: int = 256,
) -> Path:
    """Write ``slides`` synthetic slides (or photos) with annotations and ``manifest.csv``.

    ``kind="wsi"``: ``slide_NNN.tif`` (pyramidal tiled TIFF, levels 1/4/16/64, 0.5 µm/px, square
    ``size``), ``slide_NNN.geojson`` (QuPath, named in the manifest) and ``slide_NNN.xml``
    (ASAP) beside it. ``kind="photo"``: ``photo_NNN.jpg`` (long side ``size``, 4:3) and
    ``photo_NNN_mask.png`` (0 normal / 255 lesion). The manifest lists, with paths relative to
    ``out_dir``, the train slides first, then sub-train, then test (see :func:`split_counts`).
    Deterministic for ``seed``. Returns the manifest path.

    Example:
        >>> generate("demo", slides=4, size=4096, seed=0)  # doctest: +SKIP
        PosixPath('demo/manifest.csv')
    """
    from msn_cli.synth.photo import write_synthetic_photo
    from msn_cli.synth.slide import write_synthetic_slide

    out = Path(out_dir)
    if kind not in KINDS:
        raise MsnUsageError(out, f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if slides < 3:
        raise MsnUsageError(out, f"need at least 3 slides (train, sub-train, test), got {slides}")
    if size < 256:
        raise MsnUsageError(out, f"--size must be at least 256 pixels, got {size}")
    if patch < 16:
        raise MsnUsageError(out, f"patch size must be at least 16, got {patch}")
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_sub, _ = split_counts(slides)
    rows = []
    for i in range(slides):
        split = "train" if i < n_train else "sub-train" if i < n_train + n_sub else "test"
        s = slide_seed(seed, i)
        if kind == "wsi":
            name = f"slide_{i:03d}"
            truth = write_synthetic_slide(out / f"{name}.tif", (size, size), s, patch=patch)
            rows.append((truth.path.name, truth.geojson.name, split))
        else:
            name = f"photo_{i:03d}"
            short = max(64, round(size * 3 / 4))
            photo = write_synthetic_photo(
                out / f"{name}.jpg", out / f"{name}_mask.png", (size, short), s
            )
            rows.append((photo.image.name, photo.mask.name, split))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    manifest = out / MANIFEST
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest

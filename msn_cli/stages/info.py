"""Stage ``info``: what a patch store holds."""

from __future__ import annotations

from typing import Any

from msn_cli.io.store import SPLITS, PatchStore
from msn_cli.vocab import IGNORE


def store_info(url: str) -> dict[str, Any]:
    """Slides, patch counts per split, class pixel fractions, levels and patch size.

    Class fractions are over labelled X1 pixels (ignore excluded), from counts ``tile`` records.
    """
    store = PatchStore.open(url)
    spec = store.spec
    slides = []
    per_split = {s: {"slides": 0, "patches": 0} for s in SPLITS}
    totals = [0] * len(spec.classes)
    ignored = 0
    for rec in store.slides(complete_only=False):
        slides.append(
            {
                "name": rec.name,
                "split": rec.split,
                "patches": rec.n_patches,
                "complete": rec.complete,
                "size": list(rec.size),
                "mpp": rec.mpp,
                "source": rec.source,
                "codecs": _codecs(rec),
            }
        )
        if not rec.complete:
            continue
        per_split[rec.split]["slides"] += 1
        per_split[rec.split]["patches"] += rec.n_patches
        px = rec.label_pixels
        for i in range(len(totals)):
            totals[i] += px[i] if i < len(px) else 0
        ignored += px[IGNORE] if len(px) > IGNORE else 0
    labelled = sum(totals)
    return {
        "store": url,
        "schema_version": spec.schema_version,
        "patch_size": spec.patch_size,
        "levels": [f"{m:g}x" for m in spec.magnifications],
        "classes": list(spec.classes),
        "splits": per_split,
        "class_fractions": {
            c: (t / labelled if labelled else 0.0)
            for c, t in zip(spec.classes, totals, strict=True)
        },
        "ignored_fraction": ignored / (labelled + ignored) if labelled + ignored else 0.0,
        "slides": slides,
    }


def _codecs(rec) -> list[str] | None:
    """The image codec of x1, x2, x3 (None for a slide killed before its layout was written)."""
    try:
        return [img.codec for img in rec.layout.images]
    except (KeyError, TypeError, ValueError):
        return None

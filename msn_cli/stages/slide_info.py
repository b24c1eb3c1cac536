"""Stage ``info SLIDE``: a slide's pyramid, and which ``--levels`` / ``--mpp`` it can serve.

Before tiling a scanner's slide a user wants to know whether ``16x 4x 1x`` fits it: for each
branch, the level-0 downsample, the pyramid level ``tile`` and ``predict`` read it from, and
whether its pixels are *copied* from that level (a level at exactly that scale) or *resampled*
from a finer one, with how many level pixels are decoded per kept pixel (the cost). A choice
the slide cannot serve (``--mpp`` finer than the scan, ``--mpp`` on a slide without a
resolution, a patch size off the lattice) says why, in the words ``tile`` would use.

Example:
    >>> info = slide_info("CMU-1.svs")  # doctest: +SKIP
    >>> [row["mpp"] for row in info["serving"]]  # doctest: +SKIP
    [None, 0.5, 1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError
from msn_cli.io.patches import Levels, PatchGeometry, base_downsample, check_patch_size
from msn_cli.io.slide import LEVEL_TOLERANCE, Slide, open_slide
from msn_cli.vocab import BRANCHES

#: ``--mpp`` values shown besides the scan's own resolution (those the slide can reach).
COMMON_MPP = (0.25, 0.5, 1.0, 2.0)
#: A branch decoding more level pixels than this per kept pixel is flagged as slow (a 2x
#: reduction, 4, is not).
SLOW_DECODE = 4.5


def slide_info(
    path: str | Path,
    levels: Levels | None = None,
    patch_size: int = 256,
    mpps: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """What ``path`` holds and how it serves ``levels`` at each of ``mpps``.

    ``mpps`` defaults to the scan's resolution (``None``: X1 at level 0) and each of
    :data:`COMMON_MPP` coarser than the scan (by more than 1 %: 0.5 on a 0.499 scan is
    the scan's own).
    """
    levels = levels or Levels.parse("16x 4x 1x")
    slide = open_slide(path)
    try:
        if mpps is None:
            coarser = [m for m in COMMON_MPP if slide.mpp and m > slide.mpp * 1.01]
            mpps = [None, *coarser]
        w, h = slide.dimensions
        return {
            "slide": str(path),
            "vendor": slide.vendor,
            "size": [w, h],
            "mpp": slide.mpp,
            "objective_power": slide.objective_power,
            "associated": list(slide.associated),
            "levels": [
                {
                    "level": i,
                    "size": [lv.width, lv.height],
                    "downsample": _ds(lv),
                    "mpp": slide.mpp * _ds(lv) if slide.mpp else None,
                }
                for i, lv in enumerate(slide.levels)
            ],
            "patch_size": patch_size,
            "levels_asked": levels.labels(),
            "serving": [_serving(slide, levels, patch_size, m) for m in mpps],
        }
    finally:
        slide.close()


def _ds(lv) -> float:
    return max(lv.downsample_x, lv.downsample_y)


def _serving(slide: Slide, levels: Levels, patch_size: int, mpp: float | None) -> dict[str, Any]:
    """One ``--levels``/``--mpp`` choice: each branch's source level, or why it cannot be."""
    row: dict[str, Any] = {"mpp": mpp, "ok": True, "problem": None, "notes": [], "branches": []}
    try:
        check_patch_size(patch_size, levels)
        base = base_downsample(slide, mpp)
    except MsnError as exc:  # MsnUsageError too: one line, as tile would say it
        return {**row, "ok": False, "problem": exc.problem}
    geometry = PatchGeometry.create(patch_size, levels, base)
    w, h = slide.dimensions
    row["patches"] = len(geometry.grid(w, h))
    for name, ds in zip(BRANCHES, geometry.downsamples, strict=True):
        k = slide.best_level(ds)
        lv = slide.levels[k]
        copied = all(abs(d - ds) <= 1e-9 * ds for d in (lv.downsample_x, lv.downsample_y))
        decode = (ds / _ds(lv)) ** 2 if not copied else 1.0
        view = patch_size * ds
        row["branches"].append(
            {
                "branch": name,
                "downsample": ds,
                "mpp": slide.mpp * ds if slide.mpp else None,
                "read_level": k,
                "read": "copied" if copied else "resampled",
                "decode_per_pixel": decode,
                "view_px": view,
                "view_um": view * slide.mpp if slide.mpp else None,
            }
        )
        if decode > SLOW_DECODE:
            row["notes"].append(
                f"{name} is resampled from level {k}: {decode:.0f} level pixels decoded per "
                f"kept pixel (no pyramid level near downsample {ds:g})"
            )
        if view >= max(w, h) * LEVEL_TOLERANCE:
            row["notes"].append(
                f"{name}'s view ({view:g} px) is wider than the slide ({w}x{h}): "
                "mostly zero padding"
            )
    if geometry.footprint > min(w, h):
        row["notes"].append(
            f"an X1 patch ({geometry.footprint:g} px) is larger than the slide's short side"
        )
    return row

"""ISIC-like synthetic dermoscopy photographs: a JPEG image and a PNG lesion mask.

Mask values are 0 (normal skin) and 255 (lesion), the ISIC convention. Classes: normal, lesion.
The lesion is an irregular blob carrying a fine pigment network (8-pixel mesh, gone after 16x
downsampling) on a brown ground that darkens towards its centre; one to three flat "freckles"
of the lesion rim's mean colour but without the network are not lesion, so only the fine
detail (X1) tells a freckle from a lesion's edge, while the lesion's size and dark centre are
context (X3). Hairs are drawn over everything and do not change the mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from msn_cli.errors import MsnUsageError
from msn_cli.synth.geometry import fill_polygon, star_polygon

#: Class names of the photo kind (mask value 0 and 255).
PHOTO_CLASSES = ("normal", "lesion")


@dataclass(frozen=True)
class PhotoTruth:
    """What :func:`write_synthetic_photo` wrote."""

    image: Path
    mask: Path
    size: tuple[int, int]
    lesion: np.ndarray  # (N, 2) polygon, pixel coordinates
    lesion_fraction: float


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], float32 (h, w): a random grid, bicubic-upsampled."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 127.5 - 1.0


def write_synthetic_photo(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    size: tuple[int, int] = (1024, 768),
    seed: int = 0,
    *,
    quality: int = 92,
) -> PhotoTruth:
    """Write one synthetic skin photograph (JPEG) and its lesion mask (PNG, 0/255)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    w, h = (int(v) for v in size)
    if w < 64 or h < 64:
        raise MsnUsageError(image_path, f"photo size must be at least 64 x 64, got {w} x {h}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, w, h, 0x15C]))
    short = min(w, h)

    skin = np.array([226.0, 176.0, 152.0], np.float32) * rng.uniform(0.92, 1.04, 3)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    light = 1.0 - 0.25 * (((xs - w / 2) / w) ** 2 + ((ys - h / 2) / h) ** 2)
    light *= 1.0 + 0.04 * _smooth_noise(rng, w, h, 6)
    img = light[..., None] * skin[None, None, :]

    # the lesion: brown ground, darker centre, fine pigment network (computed in its box)
    centre = (w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.12, 0.12) * h)
    radius = rng.uniform(0.2, 0.28) * short
    lesion = star_polygon(rng, centre, radius, harmonics=(2, 7), roughness=0.3, vertices=128)
    mask = np.zeros((h, w), np.uint8)
    fill_polygon(mask, lesion, 255)
    x0, y0 = (max(0, int(v)) for v in lesion.min(axis=0))
    x1, y1 = (int(np.ceil(v)) + 1 for v in lesion.max(axis=0))
    box = (slice(y0, min(h, y1)), slice(x0, min(w, x1)))
    yy, xx = ys[box[0]], xs[:, box[1]]
    ground = np.array([150.0, 100.0, 76.0], np.float32)
    ink = np.array([80.0, 48.0, 36.0], np.float32)
    wobble = 1.2 * np.sin(2 * np.pi * yy / 64) + 1.2 * np.sin(2 * np.pi * xx / 96)
    gx = np.abs(np.mod(xx + wobble, 8) - 4)
    gy = np.abs(np.mod(yy - wobble, 8) - 4)
    net = np.clip(1.6 - np.minimum(gx, gy), 0.0, 1.0)
    depth = np.clip(1 - np.hypot(xx - centre[0], yy - centre[1]) / (1.3 * radius), 0, 1)
    texture = ground * (1 - 0.35 * depth[..., None]) + (0.8 * net[..., None]) * (ink - ground)
    inside = mask[box] > 0
    img[box][inside] = texture[inside]
    mean_net = float(net[inside].mean()) if inside.any() else 0.3

    # freckles: the lesion's mean rim colour without the network; not lesion
    freckle = ground + mean_net * 0.8 * (ink - ground)
    for _ in range(int(rng.integers(1, 4))):
        fr = rng.uniform(0.04, 0.08) * short
        for _ in range(50):
            c = (rng.uniform(fr * 1.3, w - fr * 1.3), rng.uniform(fr * 1.3, h - fr * 1.3))
            if np.hypot(c[0] - centre[0], c[1] - centre[1]) > 1.35 * radius + 1.4 * fr:
                poly = star_polygon(rng, c, fr, roughness=0.2, vertices=48)
                fx0, fy0 = int(c[0] - 1.3 * fr), int(c[1] - 1.3 * fr)
                fbox = (slice(fy0, int(c[1] + 1.3 * fr) + 1), slice(fx0, int(c[0] + 1.3 * fr) + 1))
                spot = np.zeros(img[fbox].shape[:2], np.uint8)
                fill_polygon(spot, poly, 1, origin=(fx0, fy0))
                img[fbox][spot > 0] = freckle
                break

    img += rng.integers(-5, 6, img.shape, dtype=np.int8) + np.float32(0.5)
    np.minimum(img, 255.0, out=img)
    np.maximum(img, 0.0, out=img)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(4, 12))):
        p0, p1, p2 = rng.uniform(0, 1, (3, 2)) * [w, h]
        t = np.linspace(0, 1, 40)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        width = max(1, round(short / 400 * rng.uniform(0.8, 1.6)))
        draw.line([tuple(map(float, q)) for q in curve], fill=(40, 28, 22), width=width)

    for path in (image_path, mask_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _save(pil, image_path, "JPEG", quality=quality)
    _save(Image.fromarray(mask), mask_path, "PNG")
    return PhotoTruth(image_path, mask_path, (w, h), lesion, float((mask > 0).mean()))


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format=fmt, **kw)
    os.replace(tmp, path)

"""Class colours shared by every picture msn draws (figures, ``predict``'s overlay).

Class ``i`` is drawn in ``PALETTE[i]`` (the first six match the colours ``write_geojson`` gives
QuPath, so a class looks the same everywhere); more classes cycle through extra colours. The
ignore label 255 is drawn in :data:`IGNORE_COLOR`.

Example:
    >>> lut = color_table(4)
    >>> lut.shape, lut[1].tolist(), lut[255].tolist()
    ((256, 3), [0, 160, 0], [200, 200, 200])
    >>> colorize(np.array([[0, 3], [255, 1]], np.uint8), 4).shape
    (2, 2, 3)
"""

from __future__ import annotations

import numpy as np

from msn_cli.vocab import IGNORE

#: RGB of class 0, 1, ... (BACH: normal black, benign green, in situ yellow, invasive red).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (0, 160, 0),
    (230, 200, 0),
    (230, 0, 0),
    (0, 90, 230),
    (160, 0, 200),
    (0, 200, 200),
    (240, 120, 0),
    (120, 70, 20),
    (255, 120, 200),
    (90, 90, 160),
    (140, 200, 80),
)
#: RGB of ignored / unlabelled pixels (label 255).
IGNORE_COLOR: tuple[int, int, int] = (200, 200, 200)


def class_color(index: int) -> tuple[int, int, int]:
    """RGB of class ``index`` (255: the ignore colour)."""
    if index == IGNORE:
        return IGNORE_COLOR
    return PALETTE[index % len(PALETTE)]


def color_table(num_classes: int) -> np.ndarray:
    """uint8 ``(256, 3)`` look-up table: class index -> RGB; 255 and unused values grey."""
    lut = np.tile(np.array(IGNORE_COLOR, np.uint8), (256, 1))
    for i in range(min(num_classes, 255)):
        lut[i] = class_color(i)
    return lut


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 ``(..., 3)`` RGB image of a class-index array."""
    return color_table(num_classes)[np.asarray(labels, dtype=np.uint8)]


def matplotlib_colors(num_classes: int) -> list[tuple[float, float, float]]:
    """Class colours as matplotlib RGB floats (legends)."""
    return [tuple(c / 255.0 for c in class_color(i)) for i in range(num_classes)]  # type: ignore[misc]

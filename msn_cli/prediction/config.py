"""What one ``msn predict`` run is asked to do: its settings and its slides.

The pieces of :mod:`msn_cli.prediction` read these; the stage (:mod:`msn_cli.stages.predict`)
checks them and runs them, and the CLI builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PredictConfig:
    """Settings shared by every slide of one ``msn predict`` run.

    Example:
        >>> PredictConfig(Path("checkpoints"), branch="x1").batch_size
        32
    """

    checkpoints: Path
    branch: str | None = None  # None: fusion when trained, else x1 (or the baseline's input)
    #: ``best``: the top stage's best.pt (weights.pt if it has none); ``last``: its weights.pt;
    #: the stages under it always get the weights it was trained on (io/checkpoints.py)
    weights: str = "best"
    batch_size: int = 32
    device: str = "auto"
    min_tissue: float = 0.01  # 0: predict every patch
    mpp: float | None = None
    workers: int = 0
    amp: bool = False
    classes: tuple[str, ...] | None = None  # expected class names (refuse other checkpoints)
    probabilities_downsample: int = 16
    geojson_frame: str = "qupath"  # or "level0"
    geojson_type: str = "annotation"  # QuPath objectType of the features, or "detection"
    mask_format: str | None = None  # "tiff" | "ome-tiff"; None: from --out's name
    trace_max_side: int = 4096
    overlay_max_side: int = 1024


@dataclass(frozen=True)
class PredictJob:
    """One slide and where its outputs go."""

    slide: Path
    out: Path
    probabilities: Path | None = None
    geojson: Path | None = None
    overlay: Path | None = None

    def outputs(self) -> list[Path]:
        return [p for p in (self.out, self.probabilities, self.geojson, self.overlay) if p]

    @property
    def needs_probabilities(self) -> bool:
        """The bands keep probabilities: for the Zarr, or the GeoJSON's mean probabilities."""
        return self.probabilities is not None or self.geojson is not None

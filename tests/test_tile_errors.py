"""``msn tile`` on bad input: one line naming the file and the problem, a non-zero exit, no
traceback, and the slides already in the store untouched (docs/architecture.md §5).

Every case runs against a copy of a store that already holds one complete slide, ``good``;
its arrays and attributes are checksummed before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from slides import pattern, write_pyramid

from msn_cli.io.annotations import BACH_CLASSES, LabelledPolygon, write_asap_xml, write_geojson
from msn_cli.io.patches import Levels
from msn_cli.io.store import PatchStore
from msn_cli.stages.tile import SlideJob, TileConfig, tile

W, H = 320, 256
PATCH = "64"
FAST = ["--patch-size", PATCH, "--workers", "1"]


def poly(label, pts):
    return LabelledPolygon(label, BACH_CLASSES[label], np.array(pts, float), ())


def square(label, x0, y0, x1, y1):
    return poly(label, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def make_slide(path, image=None, polygons=None, **kwargs):
    """A pyramidal TIFF (``write_pyramid`` options) with a QuPath GeoJSON beside it."""
    write_pyramid(path, pattern(W, H) if image is None else image, **kwargs)
    polygons = [square(3, 40, 40, 160, 160)] if polygons is None else polygons
    write_geojson(path.with_name(path.stem + ".geojson"), polygons)
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def checksum(store, name="good") -> str:
    """SHA-256 of a slide group's arrays and attributes, and of the store's root attributes."""
    root = zarr.open_group(str(store), mode="r")
    h = hashlib.sha256(json.dumps(dict(root.attrs), sort_keys=True).encode())
    group = root[name]
    h.update(json.dumps(dict(group.attrs), sort_keys=True).encode())
    for key in sorted(group.array_keys()):
        h.update(key.encode() + np.ascontiguousarray(group[key][:]).tobytes())
    return h.hexdigest()


def slides_in(store) -> dict[str, dict]:
    root = zarr.open_group(str(store), mode="r")
    names = [k for k in root.group_keys() if k != "__locks__"]  # tile's lock files live there
    return {k: dict(root[k].attrs)["msn_slide"] for k in names}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store holding the complete slide ``good``, tiled once for the whole module."""
    d = tmp_path_factory.mktemp("pristine")
    slide = make_slide(d / "good.tif")
    config = TileConfig(Levels.parse("16x 4x 1x"), BACH_CLASSES, patch_size=int(PATCH), workers=1)
    (result,) = tile(str(d / "store.zarr"), [SlideJob(slide)], config)
    assert result.status == "tiled" and result.n_patches > 0
    return d / "store.zarr", checksum(d / "store.zarr")


@pytest.fixture
def store(pristine, tmp_path):
    """A private copy of the pristine store; after the test, ``good`` must be unchanged."""
    src, before = pristine
    dst = tmp_path / "store.zarr"
    shutil.copytree(src, dst)
    yield dst
    assert slides_in(dst)["good"]["complete"] is True
    assert checksum(dst) == before, "the slide already in the store was changed"


def assert_one_error(result, filename, *problems, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    err = lines(result.stderr)
    assert len(err) == 1, err
    assert err[0].startswith("msn: error: ")
    assert str(filename) in err[0]
    for problem in problems:
        assert problem in err[0], err[0]


# -- slides that cannot be opened or read ------------------------------------------------------


def _unknown_compression(path):
    make_slide(path)
    with tifffile.TiffFile(path) as tif:
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    data = bytearray(path.read_bytes())
    for off in offsets:
        data[off : off + 2] = (34999).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def _text(path):
    path.write_text("this is not a slide\n")
    write_geojson(path.with_suffix(".geojson"), [square(1, 0, 0, 10, 10)])


def _empty(path):
    path.write_bytes(b"")
    write_geojson(path.with_suffix(".geojson"), [square(1, 0, 0, 10, 10)])


def _garbage_tiles(path):
    """A JPEG-tiled pyramid whose last level-0 tiles are garbage: it opens, then fails."""
    make_slide(path, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tiles = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    data = bytearray(path.read_bytes())
    for off, count in tiles[-3:]:
        data[off : off + count] = b"\x5a" * count
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("missing.svs", None, "no such file"),
        ("unknown.tif", _unknown_compression, "Unsupported TIFF compression: 34999"),
        ("unknown.svs", _unknown_compression, "Unsupported TIFF compression: 34999"),
        ("text.svs", _text, "not a slide format msn can open"),
        ("empty.svs", _empty, "file is empty"),
        ("garbage.tif", _garbage_tiles, "cannot decode"),
    ],
)
def test_unreadable_slide(msn_invoke, store, tmp_path, name, make, problem):
    path = tmp_path / name
    if make:
        make(path)
    result = msn_invoke("tile", path, "--store", store, *FAST)
    assert_one_error(result, path, problem)
    assert not slides_in(store).get(path.stem, {}).get("complete")


def test_truncated_tiff(store, tmp_path):
    # A real process: in-process, pytest's log capture would swallow tifffile's log record.
    path = make_slide(tmp_path / "truncated.tif")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    args = ["tile", str(path), "--store", str(store), *FAST]
    code = f"import sys; sys.argv = ['msn', *{args!r}]; from msn_cli.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1, err
    assert err[0].startswith(f"msn: error: {path}: cannot decode")


def test_failing_slide_does_not_stop_the_others(msn_invoke, store, tmp_path):
    bad = tmp_path / "bad.svs"
    _text(bad)
    ok = make_slide(tmp_path / "ok.tif", image=pattern(W, H, seed=1))
    result = msn_invoke("tile", bad, ok, "--store", store, *FAST)
    assert_one_error(result, bad, "not a slide format")
    assert slides_in(store)["ok"]["complete"] is True


def test_mid_read_failure_leaves_an_incomplete_group(msn_invoke, store, tmp_path):
    path = tmp_path / "garbage.tif"
    _garbage_tiles(path)
    assert msn_invoke("tile", path, "--store", store, *FAST).exit_code == 1
    info = json.loads(msn_invoke("info", store, "--json").stdout)
    assert info["splits"]["train"]["slides"] == 1  # only "good" counts
    assert {s["name"]: s["complete"] for s in info["slides"]}.get("garbage") in (None, False)


def test_failed_retile_keeps_the_earlier_complete_slide(msn_invoke, tmp_path):
    store = tmp_path / "store.zarr"
    path = make_slide(tmp_path / "again.tif")
    assert msn_invoke("tile", path, "--store", store, *FAST).exit_code == 0
    before = checksum(store, "again")
    _garbage_tiles(path)  # the file changes, and now fails while reading
    result = msn_invoke("tile", path, "--store", store, *FAST)
    assert_one_error(result, path, "cannot decode")
    assert slides_in(store)["again"]["complete"] is True
    assert checksum(store, "again") == before


def test_same_name_from_another_file_is_refused(msn_invoke, store, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    other = make_slide(tmp_path / "elsewhere" / "good.tif")
    result = msn_invoke("tile", other, "--store", store, *FAST)
    assert_one_error(result, other, "already has a slide 'good'", "rename one of them")


# -- annotations -------------------------------------------------------------------------------


def _feature(name, pts):
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [pts]},
        "properties": {"classification": {"name": name}},
    }


@pytest.mark.parametrize(
    ("suffix", "text", "problem"),
    [
        (".geojson", '{"type": "FeatureCollection", "features": [', "not valid JSON"),
        (".geojson", "", "not valid JSON"),
        (".geojson", '{"type": "Topology"}', "not GeoJSON annotations"),
        (".xml", "<ASAP_Annotations><Annotations>", "not valid XML"),
        (
            ".geojson",
            json.dumps([_feature("Stroma", [[10, 10], [50, 10], [50, 50], [10, 10]])]),
            "unknown class 'Stroma' (known classes: normal, benign, in situ, invasive)",
        ),
        (
            ".geojson",
            json.dumps([_feature("Benign", [[1000, 1000], [2000, 1000], [2000, 2000]])]),
            f"all 1 annotations lie outside the {W}x{H} image",
        ),
    ],
)
def test_bad_annotations(msn_invoke, store, tmp_path, suffix, text, problem):
    slide = tmp_path / "annotated.tif"
    write_pyramid(slide, pattern(W, H))
    labels = slide.with_suffix(suffix)
    labels.write_text(text)
    result = msn_invoke("tile", slide, "--store", store, *FAST)
    assert_one_error(result, labels, problem)
    assert "annotated" not in slides_in(store)


def test_unknown_class_in_asap_xml(msn_invoke, store, tmp_path):
    slide = tmp_path / "asap.tif"
    write_pyramid(slide, pattern(W, H))
    labels = tmp_path / "asap.xml"
    write_asap_xml(labels, [square(1, 10, 10, 90, 90)])
    labels.write_text(labels.read_text().replace('PartOfGroup="benign"', 'PartOfGroup="Stroma"'))
    result = msn_invoke("tile", slide, "--store", store, *FAST)
    assert_one_error(result, labels, "unknown class 'Stroma'", "known classes: normal")


def test_missing_annotations(msn_invoke, store, tmp_path):
    slide = tmp_path / "bare.tif"
    write_pyramid(slide, pattern(W, H))
    given = tmp_path / "nowhere.geojson"
    result = msn_invoke("tile", slide, "--annotations", given, "--store", store, *FAST)
    assert_one_error(result, given, "annotation file not found")


def test_polygons_partly_outside_are_clipped_with_a_warning(msn_invoke, store, tmp_path):
    slide = make_slide(
        tmp_path / "outside.tif",
        polygons=[square(3, 40, 40, 160, 160), square(2, W - 40, H - 40, W + 300, H + 300)],
    )
    result = msn_invoke("tile", slide, "--store", store, *FAST)
    assert result.exit_code == 0, result.output
    err = lines(result.stderr)
    assert len(err) == 1, err
    assert err[0].startswith("msn: warning: ")
    assert str(slide.with_suffix(".geojson")) in err[0]
    assert "1 of 2 annotations extend outside" in err[0]
    rec = slides_in(store)["outside"]
    assert rec["complete"] is True
    # The clipped part inside the image is labelled; nothing inside X1 is "ignore".
    assert rec["label_pixels"][2] > 0 and rec["label_pixels"][255] == 0


# -- empty and tiny slides ---------------------------------------------------------------------


def test_slide_without_tissue_is_complete_with_zero_patches(msn_invoke, store, tmp_path):
    slide = make_slide(tmp_path / "white.tif", image=np.full((H, W, 3), 255, np.uint8))
    result = msn_invoke("tile", slide, "--store", store, *FAST)
    assert result.exit_code == 0, result.output
    err = lines(result.stderr)
    assert err == [f"msn: warning: {slide}: no tissue found; the slide has zero patches"]
    info = json.loads(msn_invoke("info", store, "--json").stdout)
    white = {s["name"]: s for s in info["slides"]}["white"]
    assert white["complete"] is True and white["patches"] == 0
    assert info["splits"]["train"]["slides"] == 2
    rec = PatchStore.open(store).slide("white")
    p = int(PATCH)
    assert rec.n_patches == 0 and rec.read("x1", slice(None)).shape == (0, p, p, 3)


def test_image_smaller_than_one_patch_is_padded(msn_invoke, tmp_path):
    image = tmp_path / "tiny.png"
    Image.fromarray(pattern(100, 80)).save(image)
    write_geojson(tmp_path / "tiny.geojson", [square(1, 10, 10, 60, 60)])
    store = tmp_path / "tiny.zarr"
    args = ("--patch-size", "128", "--min-tissue", "0", "--lossless")
    result = msn_invoke("tile", image, "--store", store, *args)
    assert result.exit_code == 0, result.output
    rec = PatchStore.open(store).slide("tiny")
    assert rec.n_patches == 1 and rec.read("x1", slice(None)).shape == (1, 128, 128, 3)
    x1, y1 = rec.read("x1", 0), rec.read("y1", 0)
    np.testing.assert_array_equal(x1[:80, :100], pattern(100, 80))
    assert (x1[80:] == 0).all() and (x1[:, 100:] == 0).all()
    assert (y1[80:] == 255).all() and (y1[:, 100:] == 255).all()
    assert (y1[10:60, 10:60] == 1).all()
    assert not (y1[:80, :100] == 255).any()
    np.testing.assert_array_equal(rec.read("centers", slice(None)), [[64.0, 64.0]])
    for b in ("y2", "y3"):  # coarser branches: mostly outside the image, ignored
        assert (rec.read(b, 0) == 255).mean() > 0.5


# -- options that do not match the store -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--patch-size", "32"], "store has patch_size 64, not 32"),
        (["--patch-size", PATCH, "--levels", "8x", "2x", "1x"], "store has magnifications 16,4,1"),
        (["--patch-size", PATCH, "--classes", "normal,tumour"], "store has classes normal,benign"),
    ],
)
def test_store_made_otherwise_is_refused(msn_invoke, store, tmp_path, args, problem):
    slide = make_slide(tmp_path / "new.tif")
    result = msn_invoke("tile", slide, "--store", store, "--workers", "1", *args)
    assert_one_error(result, store, problem)
    assert "new" not in slides_in(store)


@pytest.mark.parametrize(
    "levels",
    [["4x", "16x", "1x"], ["16", "4", "four"], ["16x", "4x", "4x"], ["0x", "-4x", "1x"]],
)
def test_bad_levels_syntax(msn_invoke, store, tmp_path, levels):
    slide = make_slide(tmp_path / "new.tif")
    result = msn_invoke("tile", slide, "--store", store, *FAST, "--levels", *levels)
    assert_one_error(result, "--levels", exit_code=2)
    assert "new" not in slides_in(store)

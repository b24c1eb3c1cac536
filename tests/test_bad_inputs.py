"""Output that cannot be written and the bad-input corpus not covered elsewhere
(docs/architecture.md §5).

Each case: one line ``msn: error: <file>: <problem>`` (or, for input msn can still use, one
``msn: warning:`` line), the right exit code within 30 seconds, bounded memory, and nothing
written earlier changed. A full disk is simulated with ``RLIMIT_FSIZE`` in a child process (the
suite runs as root in CI, where a read-only folder does not stop writes); an unwritable folder
is a path whose parent is a regular file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
import tifffile
import torch
from faults import error_lines, one_error, run_fsize_limited, run_measured
from slides import pattern, write_pyramid
from test_faults import tree_digest
from test_predict import make_checkpoints
from test_train_support import FAST, make_store

from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.store import PatchStore
from msn_cli.stages.tile_write import RESAMPLE_SOURCE_PIXELS
from msn_cli.training.config import MetaConfig

TILE = ["--patch-size", "64", "--workers", "1", "--min-tissue", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store of three tiny slides and a checkpoint directory with a finished meta stage."""
    from msn_cli.stages.train_meta import train_meta

    d = tmp_path_factory.mktemp("bad-inputs")
    n = torch.get_num_threads()
    store = make_store(d)
    tiny = {"batch_size": 4, "workers": 0, "threads": 1}
    train_meta(MetaConfig(store, str(d / "ck"), epochs=1, width=0.125, **tiny))
    torch.set_num_threads(n)
    return store, d / "ck"


def a_file(tmp_path):
    """A regular file: a path under it can be neither created nor written, even by root."""
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


# -- output that cannot be written --------------------------------------------------------------


def test_tile_into_an_unwritable_store(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    (tmp_path / "s.geojson").write_text(json.dumps([_feature(SQUARE)]))
    store = a_file(tmp_path) / "st.zarr"
    r = msn_invoke("tile", slide, "--store", store, *TILE)
    assert r.exit_code == 1
    one_error(r.stderr, store, "Not a directory")


def test_tile_on_a_full_disk_keeps_the_slides_already_in_the_store(trained, tmp_path):
    store = tmp_path / "st.zarr"
    shutil.copytree(trained[0], store)
    before = tree_digest(store)
    write_pyramid(tmp_path / "big.tif", pattern(512, 512, seed=5))
    write_geojson(
        tmp_path / "big.geojson",
        [LabelledPolygon(1, "benign", np.array([[0, 0], [200, 0], [200, 200]], float))],
    )
    r = run_fsize_limited("tile", tmp_path / "big.tif", "--store", store, "--levels", "4x", "2x",
                          "1x", *TILE, limit=4096)  # fmt: skip
    assert r.returncode == 1
    one_error(r.stderr, store, "File too large")
    assert [s.name for s in PatchStore.open(store).slides()] == ["s0", "s1", "s2"]
    after = tree_digest(store)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith("__partial__big/") for k in set(after) - set(before))


def test_training_into_an_unwritable_checkpoint_directory(msn_invoke, trained, tmp_path):
    ck = a_file(tmp_path) / "ck"
    r = msn_invoke("train-meta", "--store", trained[0], "--checkpoints", ck, *FAST)
    assert r.exit_code == 1
    one_error(r.stderr, ck, "Not a directory")


def test_training_on_a_full_disk_keeps_the_earlier_stages(trained, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(trained[1], ck)
    meta = tree_digest(ck / "meta")
    args = ["train-memrm", "--store", trained[0], "--checkpoints", ck, "--epochs", "1", *FAST]
    r = run_fsize_limited(*args, limit=20_000)
    assert r.returncode == 1
    one_error(r.stderr, ck / "memrm", "File too large")
    assert tree_digest(ck / "meta") == meta
    assert not (ck / "memrm" / "weights.pt").exists()
    assert CheckpointDir(ck).load_model("cpu")[1] == ("meta",)
    assert not list(ck.rglob(".*tmp*"))  # no temporary left behind


def test_predict_on_a_full_disk_writes_no_mask_and_keeps_earlier_ones(tmp_path):
    write_pyramid(tmp_path / "s.tif", pattern(320, 256, seed=2), downsamples=(1, 4))
    ck = make_checkpoints(tmp_path / "ck")
    out = tmp_path / "masks"
    out.mkdir()
    (out / "earlier.tif").write_bytes(b"an earlier mask")
    args = ["predict", tmp_path / "s.tif", "--checkpoints", ck, "--out", out / "s.tif"]
    r = run_fsize_limited(*args, "--min-tissue", "0", "--device", "cpu", limit=2048)
    assert r.returncode == 1
    one_error(r.stderr, out / "s.tif", "File too large")
    assert not (out / "s.tif").exists()
    assert (out / "earlier.tif").read_bytes() == b"an earlier mask"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary mask


def test_evaluate_into_an_unwritable_folder(msn_invoke, trained, tmp_path):
    blocker = a_file(tmp_path)
    args = ["evaluate", "--store", trained[0], "--checkpoints", trained[1], "--device", "cpu"]
    r = msn_invoke(*args, "--workers", "0", "--json", blocker / "scores.json")
    assert r.exit_code == 1
    one_error(r.stderr, blocker)


# -- slides -------------------------------------------------------------------------------------


def _enormous(path, tiled: bool) -> None:
    """A small TIFF whose header then claims 10^6 x 10^6 pixels (the data stay a few KB)."""
    kwargs = {"tile": (256, 256)} if tiled else {"rowsperstrip": 256}
    tifffile.imwrite(path, pattern(256, 256), photometric="rgb", compression="deflate", **kwargs)
    with tifffile.TiffFile(path) as tif:
        names = ["ImageWidth", "ImageLength"] + ([] if tiled else ["RowsPerStrip"])
        entries = [tif.pages[0].tags[name].offset for name in names]
    data = bytearray(path.read_bytes())
    for offset in entries:  # tag entry: code, type (4 = LONG), count, value
        code = struct.unpack_from("<H", data, offset)[0]
        struct.pack_into("<HHII", data, offset, code, 4, 1, 10**6)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "one-strip"])
def test_tiff_claiming_enormous_dimensions_fails_fast_in_bounded_memory(tmp_path, tiled):
    path = tmp_path / "enormous.tif"
    _enormous(path, tiled)
    write_geojson(tmp_path / "enormous.geojson", [])
    r = run_measured("tile", path, "--store", tmp_path / "st.zarr", *TILE)
    assert r.returncode == 1
    one_error(r.stderr, path)
    assert r.max_rss_bytes < 1 << 30, r.max_rss_bytes
    assert r.seconds < 30


def _aperio_without_numeric_mpp(path) -> None:
    desc = (
        "Aperio Image Library v11.0.37\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=70"
        "|AppMag = 20|MPP = not-a-number"
    )
    tifffile.imwrite(path, pattern(512, 512), tile=(256, 256), photometric="rgb",
                     compression="jpeg", description=desc, metadata=None)  # fmt: skip


@pytest.mark.parametrize("case", ["missing", "non-numeric"])
def test_slide_without_usable_mpp_tiles_at_level_0_and_refuses_mpp(msn_invoke, tmp_path, case):
    path = tmp_path / ("plain.tif" if case == "missing" else "aperio.svs")
    if case == "missing":
        write_pyramid(path, pattern(512, 512), mpp=None)
    else:
        _aperio_without_numeric_mpp(path)
    sq = np.array([[0, 0], [300, 0], [300, 300], [0, 300]], float)
    write_geojson(path.with_suffix(".geojson"), [LabelledPolygon(1, "benign", sq)])
    store = tmp_path / "st.zarr"
    r = msn_invoke("tile", path, "--store", store, *TILE)
    assert r.exit_code == 0, r.output
    rec = PatchStore.open(store).slide(path.stem)
    assert rec.mpp is None and rec.downsamples == (1.0, 4.0, 16.0) and rec.n_patches == 64
    r = msn_invoke("tile", path, "--store", tmp_path / "mpp.zarr", "--mpp", "1", *TILE)
    assert r.exit_code == 1
    one_error(r.stderr, path, "records no microns per pixel", "--mpp")


# -- annotations --------------------------------------------------------------------------------

ASAP = (
    '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
    '<Annotation Name="A1" Type="Polygon" PartOfGroup="benign">{}</Annotation>'
    "</Annotations><AnnotationGroups/></ASAP_Annotations>"
)


def _slide(tmp_path, name="s"):
    path = tmp_path / f"{name}.tif"
    write_pyramid(path, pattern(256, 256))
    return path


def _feature(geometry, name="benign"):
    props = {"classification": {"name": name}}
    return {"type": "Feature", "geometry": geometry, "properties": props}


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]]}


def test_asap_coordinate_without_x_is_an_error(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    coords = '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="50" Y="0"/>'
    xml = tmp_path / "s.xml"
    xml.write_text(
        ASAP.format(f'<Coordinates>{coords}<Coordinate Order="2" Y="50"/></Coordinates>')
    )
    r = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", *TILE)
    assert r.exit_code == 1
    one_error(r.stderr, xml, "annotation 'A1' coordinate 2: X is missing")
    assert PatchStore.open(tmp_path / "st.zarr").slides() == []


def _warned(result, path, problem) -> None:
    assert result.exit_code == 0, result.output
    warnings = [w for w in error_lines(result.stderr) if w.startswith("msn: warning:")]
    assert any(str(path) in w and problem in w for w in warnings), warnings
    assert not [w for w in error_lines(result.stderr) if w.startswith("msn: error:")]


def test_asap_annotation_without_coordinates_is_skipped_with_a_warning(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    xml = tmp_path / "s.xml"
    xml.write_text(ASAP.format(""))
    r = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", *TILE)
    _warned(r, xml, "empty or degenerate polygon")


@pytest.mark.parametrize("empty", [None, {"type": "Polygon", "coordinates": []}])
def test_geojson_empty_geometry_is_skipped_with_a_warning(msn_invoke, tmp_path, empty):
    slide = _slide(tmp_path)
    gj = tmp_path / "s.geojson"
    gj.write_text(json.dumps([_feature(empty), _feature(SQUARE)]))
    store = tmp_path / "st.zarr"
    r = msn_invoke("tile", slide, "--store", store, *TILE)
    _warned(r, gj, "empty geometry")
    y1 = PatchStore.open(store).slide("s").read("y1", slice(None))
    assert (y1[0] == 1).all()  # the usable square is still labelled


def test_geojson_self_intersecting_polygon_is_filled_even_odd(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    bow_tie = [[[0, 0], [256, 256], [256, 0], [0, 256], [0, 0]]]  # left and right triangles
    write = tmp_path / "s.geojson"
    write.write_text(json.dumps([_feature({"type": "Polygon", "coordinates": bow_tie})]))
    store = tmp_path / "st.zarr"
    r = msn_invoke("tile", slide, "--store", store, *TILE)
    assert r.exit_code == 0 and not error_lines(r.stderr), r.output
    rec = PatchStore.open(store).slide("s")
    centers = [tuple(c) for c in rec.read("centers", slice(None))]
    y1 = rec.read("y1", slice(None))
    left, top = y1[centers.index((32.0, 160.0))], y1[centers.index((160.0, 32.0))]
    assert left[32, 8] == 1 and top[8, 32] == 0  # inside the left triangle; above the crossing


def test_annotation_class_not_in_classes(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    gj = tmp_path / "s.geojson"
    gj.write_text(json.dumps([_feature(SQUARE, "benign")]))
    r = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", "--classes", "normal,tumour",
                   *TILE)  # fmt: skip
    assert r.exit_code == 1
    one_error(r.stderr, gj, "unknown class 'benign'", "normal, tumour")


# -- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train-memrm", "evaluate"])
@pytest.mark.parametrize("change", ["classes", "patch_size"])
def test_checkpoints_of_another_class_set_or_patch_size(msn_invoke, trained, tmp_path, command,
                                                        change):  # fmt: skip
    store, source = trained
    ck = tmp_path / "ck"
    shutil.copytree(source, ck)
    card = json.loads((ck / "model.json").read_text())
    if change == "classes":
        card["classes"] = ["tumour", "stroma", "fat", "other"]
    else:
        card["model"]["patch_size"] = 32
    (ck / "model.json").write_text(json.dumps(card))
    before = tree_digest(ck)
    args = [command, "--store", store, "--checkpoints", ck, "--device", "cpu", "--workers", "0"]
    r = msn_invoke(*args)
    assert r.exit_code == 1
    problem = "model has classes" if change == "classes" else "model has patch_size 32, not 64"
    one_error(r.stderr, ck, "do not match", problem)
    assert tree_digest(ck) == before


# -- probed defects: each input keeps its checksum, one line, the exit code --------------------


def _unchanged(*paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_manifest_with_extra_fields_or_a_slide_twice_is_one_line(msn_invoke, tmp_path):
    _slide(tmp_path, "a"), _slide(tmp_path, "b")
    (tmp_path / "a.geojson").write_text(json.dumps([_feature(SQUARE)]))
    (tmp_path / "b.geojson").write_text(json.dumps([_feature(SQUARE)]))
    cases = {
        "extra.csv": ("slide,annotations,split\na.tif,,train,oops\n", "line 2: 1 more field(s)"),
        "twice.csv": ("slide,split\na.tif,train\nb.tif,test\n./a.tif,test\n", "line 4: ./a.tif"),
    }
    for name, (text, why) in cases.items():
        manifest = tmp_path / name
        manifest.write_text(text)
        before = _unchanged(manifest, tmp_path / "a.tif")
        r = msn_invoke("tile", "--manifest", manifest, "--store", tmp_path / "st.zarr", *TILE)
        assert r.exit_code == 1, r.output
        one_error(r.stderr, manifest, why)
        assert _unchanged(manifest, tmp_path / "a.tif") == before
    # A trailing comma (an empty extra field) is harmless.
    (tmp_path / "trailing.csv").write_text("slide,annotations,split\na.tif,,train,\n")
    r = msn_invoke("tile", "--manifest", tmp_path / "trailing.csv", "--store", tmp_path / "t.zarr",
                   *TILE)  # fmt: skip
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("depth", [800, 100_000])
def test_deeply_nested_geojson_is_one_line(msn_invoke, tmp_path, depth):
    slide = _slide(tmp_path)
    labels = tmp_path / "s.geojson"
    geometry = '{"type": "Polygon", "coordinates": ' + "[" * depth + "]" * depth + "}"
    props = '"properties": {"classification": {"name": "benign"}}'
    labels.write_text('[{"type": "Feature", ' + props + ', "geometry": ' + geometry + "}]")
    before = _unchanged(labels, slide)
    r = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", *TILE)
    assert r.exit_code == 1, r.output
    one_error(r.stderr, labels)
    assert _unchanged(labels, slide) == before


@pytest.mark.parametrize("coordinate", [1e19, 1e300, -5e9])
def test_coordinates_far_outside_any_slide_are_one_line(msn_invoke, tmp_path, coordinate):
    slide = _slide(tmp_path)
    far = {"type": "Polygon", "coordinates": [[[0, 0], [coordinate, 0], [50, 50], [0, 0]]]}
    labels = tmp_path / "s.geojson"
    labels.write_text(json.dumps([_feature(SQUARE), _feature(far)]))
    r = msn_invoke("tile", slide, "--store", tmp_path / "st.zarr", *TILE)
    assert r.exit_code == 1, r.output
    one_error(r.stderr, labels, "far outside any slide")
    xml = tmp_path / "x.xml"
    xml.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" '
        'PartOfGroup="benign"><Coordinates><Coordinate Order="0" X="0" Y="0"/>'
        f'<Coordinate Order="1" X="{coordinate!r}" Y="0"/><Coordinate Order="2" X="9" Y="9"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    r = msn_invoke("tile", slide, "--annotations", xml, "--store", tmp_path / "x.zarr", *TILE)
    assert r.exit_code == 1, r.output
    one_error(r.stderr, xml, "far outside any slide")


def test_a_partial_mask_values_map_is_refused_whichever_value_is_left_out(msn_invoke, tmp_path):
    from PIL import Image

    slide = _slide(tmp_path)
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 64:192] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    args = ("tile", slide, "--mask", tmp_path / "m.png", "--classes", "normal,lesion", *TILE)
    for values, missing in (("0:normal", 255), ("255:lesion", 0)):
        r = msn_invoke(*args, "--mask-values", values, "--store", tmp_path / "st.zarr")
        assert r.exit_code == 1, r.output
        one_error(r.stderr, f"mask value {missing} is not in --mask-values", f"{missing}:ignore")
    r = msn_invoke(*args, "--mask-values", "0:normal,255:ignore", "--store", tmp_path / "ok.zarr")
    assert r.exit_code == 0, r.output
    y1 = PatchStore.open(tmp_path / "ok.zarr").slide("s").read("y1", slice(None))
    assert set(np.unique(y1)) == {0, 255}


def test_a_16_bit_grey_png_keeps_its_contrast(msn_invoke, tmp_path):
    from PIL import Image

    grey = (np.add.outer(np.arange(256), np.arange(256)) * 128).astype(np.uint16)  # 0..65280
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    (tmp_path / "g.geojson").write_text(json.dumps([_feature(SQUARE)]))
    r = msn_invoke("tile", tmp_path / "g.png", "--store", tmp_path / "st.zarr", *TILE, "--lossless")
    assert r.exit_code == 0, r.output
    x1 = PatchStore.open(tmp_path / "st.zarr").slide("g").read("x1", slice(None))
    expect = np.rint(grey / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(x1[0][..., 0], expect[:64, :64])
    assert x1.max() > 200 and x1.min() == 0  # not clipped to white


def test_a_plain_image_over_the_pixel_cap_is_refused_before_decoding(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (40000, 40000)).save(big)  # a few hundred KB on disk, 1.6 Gpx decoded
    (tmp_path / "big.geojson").write_text(json.dumps([_feature(SQUARE)]))
    m = run_measured("tile", big, "--store", tmp_path / "st.zarr", *TILE)
    assert m.returncode == 1, m.stderr
    one_error(m.stderr, big, "more than 1073741824 pixels")
    assert m.seconds < 30 and m.max_rss_bytes < 1 << 30


def test_asap_xml_with_a_dtd_in_bomless_utf16_is_refused(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    xml = tmp_path / "s.xml"
    text = (
        '<?xml version="1.0" encoding="UTF-16LE"?><!DOCTYPE a [<!ENTITY e "x">]>'
        "<ASAP_Annotations><Annotations/></ASAP_Annotations>"
    )
    xml.write_bytes(text.encode("utf-16-le"))  # no byte-order mark
    before = _unchanged(xml)
    r = msn_invoke("tile", slide, "--annotations", xml, "--store", tmp_path / "st.zarr", *TILE)
    assert r.exit_code == 1, r.output
    one_error(r.stderr, xml, "DOCTYPE or ENTITY")
    assert _unchanged(xml) == before


def test_slide_names_are_reversible_and_never_hidden(msn_invoke, tmp_path):
    names = ["__old__A", "日本", "中国", "A 01", "A_01"]
    for n in names:
        _slide(tmp_path, n)
        (tmp_path / f"{n}.geojson").write_text(json.dumps([_feature(SQUARE)]))
    store = tmp_path / "st.zarr"
    r = msn_invoke("tile", *(tmp_path / f"{n}.tif" for n in names), "--store", store, *TILE)
    assert r.exit_code == 0, r.output
    slides = PatchStore.open(store).slides()
    assert len(slides) == len(names) and all(s.n_patches == 16 for s in slides)
    assert sorted(s.source for s in slides) == sorted(str((tmp_path / f"{n}.tif").resolve())
                                                     for n in names)  # fmt: skip
    info = json.loads(msn_invoke("info", store, "--json").stdout)
    assert info["splits"]["train"]["slides"] == len(names)


def test_a_hole_outside_its_polygon_is_ignored_with_a_warning(msn_invoke, tmp_path):
    slide = _slide(tmp_path)
    shell = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    inner = [[20, 20], [40, 20], [40, 40], [20, 40], [20, 20]]
    touching = [[0, 50], [30, 50], [30, 80], [0, 80], [0, 50]]  # on the shell's edge: a hole
    outside = [[150, 150], [200, 150], [200, 200], [150, 200], [150, 150]]
    multi = {"type": "MultiPolygon", "coordinates": [[shell, inner, touching, outside]]}
    labels = tmp_path / "s.geojson"
    labels.write_text(json.dumps([_feature(multi)]))
    before = _unchanged(labels, slide)
    store = tmp_path / "st.zarr"
    r = msn_invoke("tile", slide, "--store", store, *TILE, "--lossless")
    assert r.exit_code == 0, r.output
    warn = [line for line in r.stderr.splitlines() if line.startswith("msn: warning:")]
    assert len(warn) == 1 and "hole not inside its polygon" in warn[0], warn
    rec = PatchStore.open(store).slide("s")
    centers = rec.read("centers", slice(None))
    y1 = rec.read("y1", slice(None))
    full = np.zeros((256, 256), np.uint8)
    for (cx, cy), y in zip(centers.astype(int), y1, strict=True):
        full[cy - 32 : cy + 32, cx - 32 : cx + 32] = y
    assert (full[150:200, 150:200] == 0).all()  # the outside "hole" added no area
    assert (full[20:40, 20:40] == 0).all() and (full[50:80, 0:30] == 0).all()  # real holes
    assert (full[5:15, 50:95] == 1).all()
    assert _unchanged(labels, slide) == before


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("model", "width", "0.25"), "model.width: expected a number, got a string"),
        (("model", "patch_size", 1e9), "model.patch_size: expected a whole number"),
        (("model", "patch_size", 10**9), "model.patch_size: 1000000000 is out of range"),
        (("model", "num_classes", True), "model.num_classes: expected a whole number"),
        (("model", "magnifications", [16, 4]), "model.magnifications: expected a list of three"),
        (("model", "backbone", "resnet9000"), "resnet9000"),
        ((None, "classes", "nbsi"), "classes: expected a list of class names, got a string"),
        ((None, "classes", ["a", "a", "b", "c"]), "classes: class names repeat"),
        ((None, "input", "x4"), "input: expected one of"),
        ((None, "model", []), "model: expected an object, got a list"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "train-memrm"])
def test_a_model_json_outside_its_schema_is_one_line(msn_invoke, trained, tmp_path, command,
                                                      edit, problem):  # fmt: skip
    store, source = trained
    ck = tmp_path / "ck"
    shutil.copytree(source, ck)
    card = json.loads((ck / "model.json").read_text())
    part, key, value = edit
    (card[part] if part else card)[key] = value
    (ck / "model.json").write_text(json.dumps(card))
    before = tree_digest(ck)
    if command == "predict":
        slide = _slide(tmp_path)
        args = ["predict", slide, "--checkpoints", ck, "--out", tmp_path / "m.tif"]
    else:
        args = ["train-memrm", "--store", store, "--checkpoints", ck, "--workers", "0"]
    r = msn_invoke(*args, "--device", "cpu")
    assert r.exit_code == 1
    one_error(r.stderr, ck / "model.json", "not a valid msn model.json", problem)
    assert tree_digest(ck) == before and not (tmp_path / "m.tif").exists()


def test_a_slide_without_a_pyramid_tiles_in_the_memory_of_one_with_one(tmp_path):
    """X1 (16x) and the tissue thumbnail come from level 0 when no coarser level exists: read
    block by block, peak memory exceeds that of the same slide with a pyramid (same run) by at
    most two workers' read budgets, not by the slide's size (reading it whole: over 1 GB)."""
    image = np.tile(pattern(1024, 1024), (8, 8, 1))  # 8192 x 8192
    for name, downsamples in (("flat", (1,)), ("pyramid", (1, 4, 16))):
        write_pyramid(tmp_path / f"{name}.tif", image, downsamples, tile=256, compression="jpeg")
    args = ["--patch-size", "64", "--workers", "2", "--unannotated", "normal"]
    peak = {}
    for name in ("flat", "pyramid"):
        m = run_measured("tile", tmp_path / f"{name}.tif", "--store", tmp_path / f"{name}.zarr",
                         *args, timeout=300)  # fmt: skip
        assert m.returncode == 0, m.stderr
        peak[name] = m.max_rss_bytes
    budget = 2 * 2 * 5 * RESAMPLE_SOURCE_PIXELS  # workers x (RGBA + RGB + resampled) reads
    assert peak["flat"] < peak["pyramid"] + budget, peak
    flat, pyr = (PatchStore.open(tmp_path / f"{n}.zarr").slide(n) for n in ("flat", "pyramid"))
    assert flat.n_patches == pyr.n_patches > 0

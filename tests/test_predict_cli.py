"""msn predict on the command line: outputs, folders and shards, bad input."""

from __future__ import annotations

import json
import shutil

import openslide
import pytest
from slides import pattern, write_pyramid
from test_predict import make_checkpoints

from msn_cli.stages.predict import partial_dir


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ck") / "ck")


@pytest.fixture
def slides(tmp_path):
    for i in range(3):
        write_pyramid(tmp_path / f"s{i}.tif", pattern(200 + 40 * i, 150, seed=i), (1, 4))
    return [tmp_path / f"s{i}.tif" for i in range(3)]


def base(ck, *more):
    return ["predict", "--checkpoints", ck, "--min-tissue", "0", "--workers", "1", *more]


def test_one_slide_with_every_output(msn_invoke, ck, slides, tmp_path):
    out = tmp_path / "m.tif"
    extras = ["--geojson", tmp_path / "m.geojson", "--overlay", tmp_path / "o.png"]
    r = msn_invoke(*base(ck, slides[0], "--out", out, *extras, "--probabilities", tmp_path / "p.z"))
    assert r.exit_code == 0, r.output
    assert openslide.OpenSlide(str(out)).dimensions == (200, 150)
    assert json.loads((tmp_path / "m.geojson").read_text())["type"] == "FeatureCollection"
    assert (tmp_path / "o.png").is_file() and (tmp_path / "p.z").is_dir()
    assert "msn predict" in r.stdout
    r = msn_invoke(*base(ck, slides[0], "--out", out))
    assert r.exit_code == 0 and "skipped" in r.stdout


def test_folder_output_manifest_and_shards(msn_invoke, ck, slides, tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_text("slide,annotations,split\n" + "".join(f"{s.name},,\n" for s in slides))
    for i in range(2):
        args = base(ck, "--manifest", manifest, "--out", tmp_path / "masks", "--shard", f"{i}/2")
        r = msn_invoke(*args, "--geojson", tmp_path / "gj")
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["s0.tif", "s1.tif", "s2.tif"]
    assert sorted(p.name for p in (tmp_path / "gj").iterdir()) == [
        "s0.geojson", "s1.geojson", "s2.geojson"
    ]  # fmt: skip


def _nothing_written(tmp_path, out):
    assert not out.exists() and not partial_dir(out).exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_unreadable_slide_one_line_no_output(msn_invoke, ck, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    out = tmp_path / "m.tif"
    r = msn_invoke(*base(ck, bad, "--out", out))
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "bad.tif" in r.stderr
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("problem", ["no-model-json", "no-meta", "no-fusion", "classes", "weights"])
def test_bad_checkpoints_one_line_no_output(msn_invoke, ck, slides, tmp_path, problem):
    bad = tmp_path / "ck"
    shutil.copytree(ck, bad)
    extra = []
    if problem == "no-model-json":
        (bad / "model.json").unlink()
    elif problem == "no-meta":
        shutil.rmtree(bad / "meta")
    elif problem == "no-fusion":
        shutil.rmtree(bad / "fusion")
        extra = ["--branch", "fusion"]
    elif problem == "classes":
        extra = ["--classes", "tumour,stroma"]
    else:  # weights from a 2-class model under a 4-class model.json
        card = json.loads((bad / "model.json").read_text())
        card["model"]["num_classes"], card["classes"] = 2, ["a", "b"]
        (bad / "model.json").write_text(json.dumps(card))
    out = tmp_path / "m.tif"
    r = msn_invoke(*base(bad, slides[0], "--out", out, *extra))
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("msn: error:")
    _nothing_written(tmp_path, out)


def test_output_not_writable_one_line_no_output(msn_invoke, ck, slides, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = msn_invoke(*base(ck, slides[0], "--out", blocker / "m.tif"))
    assert r.exit_code == 1 and "cannot write" in r.stderr
    assert r.stderr.count("\n") == 1


def test_bad_usage(msn_invoke, ck, slides, tmp_path):
    r = msn_invoke(*base(ck, slides[0]))
    assert r.exit_code == 2 and "--out" in r.stderr
    r = msn_invoke(*base(ck, slides[0], "--out", tmp_path / "m.tif", "--branch", "x9"))
    assert r.exit_code == 2 and "--branch" in r.stderr


def test_ome_tiff_folder_output_with_detection_objects(msn_invoke, ck, slides, tmp_path):
    import tifffile

    args = ["--out", tmp_path / "masks", "--format", "ome-tiff", "--geojson", tmp_path / "gj"]
    r = msn_invoke(*base(ck, slides[0], *args, "--geojson-type", "detection"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["s0.ome.tif"]
    with tifffile.TiffFile(tmp_path / "masks" / "s0.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].levels[0].shape == (150, 200)
    feats = json.loads((tmp_path / "gj" / "s0.geojson").read_text())["features"]
    assert feats and {f["properties"]["objectType"] for f in feats} == {"detection"}


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--format", "png"], "--format"),
        (["--geojson-type", "cell"], "--geojson-type"),
        (["--format", "tiff", "--out", "m.ome.tif"], "--format"),  # the name says OME-TIFF
    ],
)
def test_bad_format_or_geojson_type_one_line_usage_error(
    msn_invoke, ck, slides, tmp_path, extra, option
):
    extra = [tmp_path / a if a.endswith(".tif") else a for a in extra]
    out = ["--out", tmp_path / "m.tif"] if "--out" not in extra else []
    r = msn_invoke(*base(ck, slides[0], *out, *extra, "--geojson", tmp_path / "m.geojson"))
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and option in r.stderr and "Traceback" not in r.stderr
    written = {p.name for p in tmp_path.iterdir()} - {s.name for s in slides}
    assert not written, written

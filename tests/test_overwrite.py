"""No output of any command may be one of its inputs (one line, exit 2, inputs unchanged)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from faults import file_sums
from slides import pattern, write_pyramid
from test_predict import make_checkpoints

from msn_cli.errors import MsnUsageError
from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.guard import refuse_overwrite


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ck") / "ck")


@pytest.fixture
def data(tmp_path):
    """Two slides with annotations beside them, in one folder."""
    for i in range(2):
        write_pyramid(tmp_path / f"s{i}.tif", pattern(200, 150, seed=i), (1, 4))
        sq = np.array([[10, 10], [90, 10], [90, 90], [10, 90]], float)
        write_geojson(tmp_path / f"s{i}.geojson", [LabelledPolygon(1, "benign", sq)])
    return tmp_path


def refused(result, option: str, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"msn: error: {option}: "), err
    for w in words:
        assert w in err[0], err


def predict(ck, *args):
    return ["predict", "--checkpoints", ck, "--min-tissue", "0", "--workers", "1", *args]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (lambda d: [d / "s0.tif", "--out", d / "s0.tif"], "--out"),
        (lambda d: [d / "s0.tif", d / "s1.tif", "--out", d], "--out"),  # folder mode
        (
            lambda d: [d / "s0.tif", "--out", d / "m.tif", "--geojson", d / "s0.geojson"],
            "--geojson",
        ),
        # folder mode: <geojson folder>/s0.geojson is the ground truth beside s0.tif
        (lambda d: [d / "s0.tif", d / "s1.tif", "--out", d / "m", "--geojson", d], "--geojson"),
        (lambda d: [d / "s0.tif", "--out", d / "m.tif", "--overlay", d / "s1.geojson"], None),
        (lambda d: [d / "s0.tif", "--out", d / ".." / d.name / "s0.tif"], "--out"),  # via ..
    ],
)
def test_predict_never_writes_onto_its_inputs(msn_invoke, ck, data, args, option):
    before = file_sums(data)
    result = msn_invoke(*predict(ck, *args(data)))
    if option is None:  # s1's annotations are not an input of predicting s0: allowed
        assert result.exit_code == 0, result.output
        return
    refused(result, option, "is an input of this command")
    assert file_sums(data) == before
    assert not (data / "m").exists() and not (data / "m.tif").exists()


def test_predict_refuses_a_hard_link_to_the_slide(msn_invoke, ck, data):
    os.link(data / "s0.tif", data / "link.tif")
    before = file_sums(data)
    result = msn_invoke(*predict(ck, data / "s0.tif", "--out", data / "link.tif"))
    refused(result, "--out", "link.tif")
    assert file_sums(data) == before


def test_evaluate_never_writes_onto_pred_or_truth(msn_invoke, ck, data):
    pred = data / "m.tif"
    assert msn_invoke(*predict(ck, data / "s0.tif", "--out", pred)).exit_code == 0
    before = file_sums(data)
    pair = ["evaluate", "--pred", pred, "--truth", data / "s0.geojson", "--slide", data / "s0.tif"]
    refused(msn_invoke(*pair, "--json", pred), "--json", "is an input")
    refused(msn_invoke(*pair, "--json", data / "s0.geojson"), "--json", "is an input")
    refused(msn_invoke(*pair, "--markdown", data / "s0.tif"), "--markdown", "is an input")
    assert file_sums(data) == before
    assert msn_invoke(*pair, "--json", data / "score.json").exit_code == 0


def test_tile_and_training_never_write_into_their_inputs(msn_invoke, data, tmp_path):
    before = file_sums(data)
    tile = ["tile", data / "s0.tif", "--patch-size", "64", "--min-tissue", "0"]
    refused(msn_invoke(*tile, "--store", data / "s0.tif"), "--store", "is an input")
    refused(msn_invoke(*tile, "--store", data / "s0.geojson"), "--store", "is an input")
    assert file_sums(data) == before
    store = tmp_path / "st.zarr"
    assert msn_invoke(*tile, "--store", store).exit_code == 0
    stored = file_sums(store)
    for ck in (store, store / "ck"):
        result = msn_invoke("train-meta", "--store", store, "--checkpoints", ck, "--epochs", "1")
        refused(result, "--checkpoints", "would write into the input")
    assert file_sums(store) == stored


def test_refuse_overwrite_compares_files_not_spellings(tmp_path):
    (tmp_path / "a").write_text("x")
    refuse_overwrite([("--out", tmp_path / "b")], files=[tmp_path / "a"])
    refuse_overwrite([("--out", "s3://bucket/a")], files=[tmp_path / "a"])  # remote: not ours
    with pytest.raises(MsnUsageError, match="--out"):
        refuse_overwrite([("--out", f"file://{tmp_path}/a")], files=[tmp_path / "a"])
    os.symlink(tmp_path / "a", tmp_path / "l")
    with pytest.raises(MsnUsageError, match="is an input"):
        refuse_overwrite([("--out", tmp_path / "l")], files=[tmp_path / "a"])

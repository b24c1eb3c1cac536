"""``msn evaluate`` slide mode and the mIoU definition, against hand-computed matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from slides import pattern, write_pyramid

from msn_cli.errors import MsnError
from msn_cli.evaluation.results import scores
from msn_cli.evaluation.slides import SlidePair, evaluate_slide
from msn_cli.io.annotations import LabelledPolygon, open_labels, write_geojson
from msn_cli.metrics import ConfusionMatrix
from msn_cli.stages.evaluate import evaluate_slide_pairs

TWO = ("normal", "tumour")
FOUR = ("a", "b", "c", "d")


def write_mask(path, arr, tile=16, levels=2):
    """A tiled pyramidal uint8 TIFF of class indices, like ``msn predict`` writes."""
    with tifffile.TiffWriter(path) as tif:
        for i in range(levels):
            lvl = arr[:: 2**i, :: 2**i]
            tif.write(lvl, tile=(tile, tile), photometric="minisblack", subfiletype=int(i > 0))
    return path


def test_metric_by_hand_absent_classes_and_ignore():
    truth = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 3])  # class 3 only where the truth is ignored
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    s = scores(cm)
    # IoU0 = 1/(2+2-1), IoU1 = 2/(2+3-2), IoU2 = 0 (in truth, never predicted), 3 absent: null
    assert s["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and s["iou"][3] is None
    assert s["miou"] == pytest.approx(1 / 3) and s["pixels"] == 5
    cm.update(np.array([3]), np.array([0]))  # predicted, absent from truth: IoU 0, counts
    assert scores(cm)["iou"][3] == 0.0
    assert scores(cm)["miou"] == pytest.approx((1 / 4 + 2 / 3 + 0 + 0) / 4)
    empty = scores(ConfusionMatrix(2))
    assert empty["miou"] is None and empty["iou"] == [None, None]


@pytest.fixture
def half(tmp_path):
    """64x48 prediction: class 1 left of x=32; truth: class 1 square x 16..48, y 8..40."""
    pred = np.zeros((48, 64), np.uint8)
    pred[:, :32] = 1
    write_mask(tmp_path / "p.tif", pred)
    sq = np.array([[16, 8], [48, 8], [48, 40], [16, 40]], float)
    write_geojson(tmp_path / "t.geojson", [LabelledPolygon(1, "tumour", sq)])
    return SlidePair(tmp_path / "p.tif", tmp_path / "t.geojson")


def test_slide_by_hand_and_unannotated_ignore(half):
    entry, cm, un = evaluate_slide(half, TWO, window=16)
    # truth 1: 32x32 = 1024 px, half predicted 1; truth 0: 2048 px, 1024 predicted 1
    assert entry["confusion"] == [[1024, 1024], [512, 512]] and un == 0
    assert entry["iou"] == pytest.approx([1024 / 2560, 512 / 2048])
    assert entry["size"] == [64, 48] and entry["name"] == "p"
    entry, _, _ = evaluate_slide(half, TWO, background=255)
    # only the square is labelled; class 0 is predicted there, absent from truth: IoU 0
    assert entry["confusion"] == [[0, 0], [512, 512]]
    assert entry["iou"] == [0.0, 0.5] and entry["miou"] == 0.25


def test_streaming_equals_whole_image_and_unpredicted_pixels(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 35, 50  # not a multiple of the tile: edge windows are partial
    pred = rng.integers(0, 4, (h, w)).astype(np.uint8)
    pred[:5, :7] = 255
    truth = rng.integers(0, 4, (h, w)).astype(np.uint8)
    truth[10:20, 30:] = 255
    write_mask(tmp_path / "p.tif", pred)
    tifffile.imwrite(tmp_path / "t_mask.tif", truth, tile=(16, 16))
    pair = SlidePair(tmp_path / "p.tif", tmp_path / "t_mask.tif", name="s")
    keep = (truth != 255) & (pred != 255)
    expect = np.bincount(truth[keep] * 4 + pred[keep], minlength=16).reshape(4, 4)
    for window in (16, 32, 4096):
        entry, _, un = evaluate_slide(pair, FOUR, window=window)
        assert entry["confusion"] == expect.tolist()
        assert un == int(((pred == 255) & (truth != 255)).sum()) == entry["unpredicted_pixels"]
    result = evaluate_slide_pairs([pair, pair], FOUR)
    assert result["pooled"]["confusion"] == (2 * expect).tolist() and result["n_slides"] == 2
    assert result["pooled"]["unpredicted_pixels"] == 2 * un


def test_downsampled_prediction_is_scored_at_its_resolution(tmp_path):
    write_pyramid(tmp_path / "s.tif", pattern(128, 96))
    sq = np.array([[10, 10], [90, 10], [90, 70], [10, 70]], float)
    write_geojson(tmp_path / "t.geojson", [LabelledPolygon(2, "c", sq)])
    pred = np.zeros((48, 64), np.uint8)
    pred[10:30, 5:40] = 2
    write_mask(tmp_path / "p.tif", pred)
    pair = SlidePair(tmp_path / "p.tif", tmp_path / "t.geojson", tmp_path / "s.tif")
    entry, _, _ = evaluate_slide(pair, FOUR)
    truth = open_labels(tmp_path / "t.geojson", FOUR, (128, 96)).region(0, 0, 2.0, 48, 64)
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    assert entry["confusion"] == cm.matrix.tolist() and entry["size"] == [128, 96]
    write_mask(tmp_path / "bad.tif", np.zeros((40, 64), np.uint8))
    with pytest.raises(MsnError, match="not the slide's shape"):
        evaluate_slide(SlidePair(tmp_path / "bad.tif", pair.truth, pair.slide), FOUR)


def test_cli_slide_manifest_json_and_repeatability(half, msn_invoke, tmp_path):
    (tmp_path / "m.csv").write_text("pred,truth,name\np.tif,t.geojson,A\np.tif,t.geojson,B\n")
    outs = []
    for k in range(2):
        out = tmp_path / f"s{k}.json"
        args = ["evaluate", "--manifest", tmp_path / "m.csv", "--classes", "normal,tumour"]
        res = msn_invoke(*args, "--json", out, "--markdown", tmp_path / "s.md")
        assert res.exit_code == 0, res.output
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    data = json.loads(outs[0])
    keys = {"kind", "method", "classes", "n_slides", "slides", "pooled", "schema_version"}
    assert set(data) == keys and data["kind"] == "slides"
    assert [s["name"] for s in data["slides"]] == ["A", "B"]
    assert data["pooled"]["confusion"] == [[2048, 2048], [1024, 1024]]
    assert (
        "pooled" in res.stdout
        and "| Method | Slides | mIoU | normal | tumour |" in (tmp_path / "s.md").read_text()
    )
    res = msn_invoke(
        "evaluate", "--pred", half.pred, "--truth", half.truth, "--classes", "normal,tumour",
        "--unannotated", "ignore", "--json", tmp_path / "one.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "one.json").read_text())["pooled"]["miou"] == 0.25


def test_bad_slide_inputs_are_one_line_errors(half, msn_invoke, tmp_path):
    bad = np.full((48, 64), 7, np.uint8)
    write_mask(tmp_path / "bad.tif", bad)
    two = ("--classes", "normal,tumour")
    res = msn_invoke("evaluate", "--pred", tmp_path / "bad.tif", "--truth", half.truth, *two)
    assert res.exit_code != 0 and "mask value 7 is not a class index" in res.stderr
    res = msn_invoke("evaluate", "--pred", half.pred)
    assert res.exit_code != 0 and "--truth" in res.stderr
    res = msn_invoke("evaluate", "--pred", tmp_path / "none.tif", "--truth", half.truth)
    assert res.exit_code != 0 and "no such prediction mask" in res.stderr
    (tmp_path / "m.csv").write_text("slide,annotations\na,b\n")
    res = msn_invoke("evaluate", "--manifest", tmp_path / "m.csv")
    assert res.exit_code != 0 and "pred,truth" in res.stderr


STORE_RUN = {
    "kind": "store",
    "method": "MSN",
    "split": "test",
    "params_m": 15.62,
    "miou": {"x1": 0.4641, "x2": 0.472, "x3": 0.425, "fusion": 0.476},
}
META_RUN = {
    "kind": "store",
    "method": "Meta-branch",
    "split": "test",
    "params_m": 12.8,
    "miou": {"x1": 0.211, "x2": 0.318, "x3": 0.425, "fusion": None},
}


def test_compare_prints_rows_and_writes_csv_and_markdown(msn_invoke, tmp_path):
    for name, run in (("a", STORE_RUN), ("b", META_RUN)):
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    res = msn_invoke(
        "evaluate", "--compare", a, b, "--csv", tmp_path / "c.csv", "--markdown", tmp_path / "c.md"
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.index("MSN") < res.stdout.index("Meta-branch")
    assert (tmp_path / "c.csv").read_text() == (
        "Method,# Parm (M),X1,X2,X3,Fusion\n"
        "MSN,15.62,46.41,47.20,42.50,47.60\n"
        "Meta-branch,12.8,21.10,31.80,42.50,\n"
    )
    md = (tmp_path / "c.md").read_text()
    assert "| MSN | 15.6 | 46.4 | 47.2 | 42.5 | 47.6 |" in md
    assert "| Meta-branch | 12.8 | 21.1 | 31.8 | 42.5 | - |" in md
    res = msn_invoke("evaluate", "--compare", a, b, "--labels", "one,two")
    assert res.exit_code == 0 and "one" in res.stdout and "two" in res.stdout
    (tmp_path / "s.json").write_text(
        json.dumps({"kind": "slides", "classes": ["a"], "pooled": {"miou": 1, "iou": [1]}})
    )
    res = msn_invoke("evaluate", "--compare", a, tmp_path / "s.json")
    assert res.exit_code != 0 and "cannot mix" in res.stderr
    (tmp_path / "x.json").write_text("{}")
    res = msn_invoke("evaluate", "--compare", a, tmp_path / "x.json")
    assert res.exit_code != 0 and "not an `msn evaluate --json` result" in res.stderr
    res = msn_invoke("evaluate", a)
    assert res.exit_code != 0 and "--compare" in res.stderr


def test_a_predict_mask_supplies_its_classes(tmp_path, msn_invoke):
    from msn_cli.io.maskwriter import write_mask_tiff

    pred = np.zeros((80, 100), np.uint8)
    pred[:, 50:] = 1
    desc = {"classes": list(TWO), "source": "s.svs"}
    write_mask_tiff(tmp_path / "m.tif", 100, 80, lambda: [pred[:40], pred[40:]], mpp=0.5,
                    description=desc, tile=16)  # fmt: skip
    sq = np.array([[50, 0], [100, 0], [100, 80], [50, 80]], float)
    write_geojson(tmp_path / "t.geojson", [LabelledPolygon(1, "tumour", sq)])
    out = tmp_path / "r.json"
    res = msn_invoke("evaluate", "--pred", tmp_path / "m.tif", "--truth", tmp_path / "t.geojson",
                     "--json", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["classes"] == list(TWO) and data["pooled"]["miou"] == 1.0
    assert data["pooled"]["confusion"] == [[4000, 0], [0, 4000]]

"""``msn evaluate --compare``: merged rows, --columns, --title, and --curve training curves."""

from __future__ import annotations

import json

import pytest

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.evaluation.compare import comparison
from msn_cli.evaluation.curves import curve_table, read_history
from msn_cli.stages.evaluate import compare_curves, compare_results


def store(method, params=12.8, fusion_params="absent", **miou):
    r = {"kind": "store", "method": method, "split": "test", "params_m": params, "miou": miou}
    if fusion_params != "absent":
        r["fusion_params_m"] = fusion_params
    return r


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def history(path, *records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def bisenet(tmp_path):
    """Table 1's BiSeNet row as three single-resolution runs, and an MSN run between them."""
    return [
        write(tmp_path / "b1.json", store("BiSeNet X1", 12.8, x1=0.401, x2=None)),
        write(tmp_path / "msn.json", store("MSN", 15.62, 0.0137, x1=0.464, fusion=0.476)),
        write(tmp_path / "b2.json", store("BiSeNet X2", 12.9, x2=0.412)),
        write(tmp_path / "b3.json", store("BiSeNet X3", None, x3=0.425)),
    ]


def test_same_labels_merge_into_one_row_at_the_first_place(bisenet, tmp_path, msn_invoke):
    labels = ["BiSeNet", "MSN", "BiSeNet", "BiSeNet"]
    t = compare_results(bisenet, labels, csv_path=tmp_path / "t.csv")
    assert [r[0] for r in t.rows] == ["BiSeNet", "MSN"]
    assert t.rows[0] == ["BiSeNet", 12.9, 0.401, 0.412, 0.425, None]  # largest # Parm
    assert (tmp_path / "t.csv").read_text().splitlines()[1] == "BiSeNet,12.9,40.10,41.20,42.50,"
    res = msn_invoke("evaluate", "--compare", *bisenet, "--labels", ",".join(labels))
    assert res.exit_code == 0, res.output
    assert res.stdout.count("BiSeNet") == 1 and "41.2" in res.stdout
    # without labels the methods differ: four rows, as before
    assert len(compare_results(bisenet).rows) == 4


def test_merged_runs_that_disagree_are_an_error(tmp_path, msn_invoke):
    a = write(tmp_path / "a.json", store("A", x1=0.40, x2=0.30))
    b = write(tmp_path / "b.json", store("B", x1=0.40, x2=0.31))
    assert comparison([json.loads(a.read_text())] * 2, ["S", "S"]).rows[0][2:4] == [0.40, 0.30]
    with pytest.raises(MsnError, match=r"labelled 'S' disagree on X2 \(30.00 vs 31.00\)"):
        compare_results([a, b], ["S", "S"])
    res = msn_invoke("evaluate", "--compare", a, b, "--labels", "S,S")
    assert res.exit_code == 1 and "'S' disagree on X2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # a hidden column does not conflict
    assert compare_results([a, b], ["S", "S"], columns=["x1"]).rows == [["S", 0.40]]


def test_columns_pick_order_and_headers_with_a_null_fusion_count(bisenet, tmp_path, msn_invoke):
    cols = ["fusion", "fusion-params", "x1", "params"]
    t = compare_results(bisenet[:2], columns=cols)
    assert t.columns == ["Method", "Fusion", "# F (M)", "X1", "# Parm (M)"]
    assert t.cells() == [
        ["BiSeNet X1", "-", "-", "40.1", "12.8"],  # an older file: no fusion_params_m
        ["MSN", "47.6", "0.014", "46.4", "15.6"],
    ]
    out = tmp_path / "t.csv"
    res = msn_invoke(
        "evaluate", "--compare", *bisenet[:2], "--columns", ",".join(cols), "--csv", out
    )
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines() == [
        "Method,Fusion,# F (M),X1,# Parm (M)",
        "BiSeNet X1,,,40.10,12.8",
        "MSN,47.60,0.0137,46.40,15.62",
    ]
    nulls = write(tmp_path / "n.json", store("F", fusion_params=None, x1=0.5))
    tiny = write(tmp_path / "t.json", store("G", fusion_params=0.0004, x1=0.5))
    assert compare_results([nulls, tiny], columns=["fusion-params"]).cells() == [
        ["F", "-"],
        ["G", "0.0004"],
    ]
    assert compare_results(bisenet[:1]).columns == [
        "Method",
        "# Parm (M)",
        "X1",
        "X2",
        "X3",
        "Fusion",
    ]


def test_title_in_table_and_markdown(bisenet, tmp_path, msn_invoke):
    md = tmp_path / "t.md"
    res = msn_invoke(
        "evaluate", "--compare", *bisenet, "--title", "Table 1 (ours)", "--markdown", md
    )
    assert res.exit_code == 0, res.output
    assert "Table 1 (ours)" in res.stdout
    assert md.read_text().startswith("Table 1 (ours)\n\n| Method |")
    assert compare_results(bisenet).title == "mIoU (%) on split test"


def test_curve_table_val_keys_train_fallback_and_union_of_epochs(tmp_path):
    msn = history(
        tmp_path / "ck" / "memrm",
        {"epoch": 1, "loss": 1.2, "train_miou_x1": 0.2, "val_miou_x1": 0.25, "seconds": 3.0},
        {"epoch": 2, "train_miou_x1": 0.3, "val_miou_x1": 0.35, "train_miou_fusion": 0.4},
        {"epoch": 3, "train_miou_x1": 0.5},  # no validation this epoch
    )
    unet = history(tmp_path / "unet" / "meta", {"epoch": 4, "train_miou_x1": 0.6})
    t = compare_curves([msn, unet / "history.jsonl"], ["x1", "fusion", "x2"])
    assert t.title == "mIoU (%) per epoch"
    label = str(tmp_path / "ck" / "memrm")
    assert t.columns == [
        "Epoch",
        f"{label} X1",
        f"{label} Fusion (train)",
        f"{tmp_path / 'unet' / 'meta'} X1 (train)",
    ]
    assert t.rows == [
        [1, 0.25, None, None],
        [2, 0.35, 0.4, None],
        [3, None, None, None],
        [4, None, None, 0.6],
    ]
    assert t.cells()[1] == ["2", "35.0", "40.0", "-"]
    md, csv = tmp_path / "c.md", tmp_path / "c.csv"
    t = compare_curves([msn, unet], ["x1"], ["MSN", "U-Net"], csv, md, title="Fig. 5")
    assert md.read_text().startswith("Fig. 5\n\n| Epoch | MSN X1 | U-Net X1 (train) |")
    assert csv.read_text().splitlines()[1:3] == ["1,25.00,", "2,35.00,"]


def test_curves_without_any_column_and_bad_histories(tmp_path):
    a = history(tmp_path / "a", {"epoch": 1, "loss": 1.0})
    with pytest.raises(MsnError, match=f"no val_miou_/train_miou_ of x2 .* of {a}"):
        compare_curves([a], ["x2"])
    with pytest.raises(MsnError, match="no history.jsonl here; train this stage first"):
        read_history(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "history.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(MsnError, match="line 2: not JSON"):
        read_history(tmp_path / "bad")
    with pytest.raises(MsnUsageError, match="'x4' is not one of x1, x2, x3, fusion"):
        curve_table([("a", [{"epoch": 1}])], ["x4"])
    with pytest.raises(MsnUsageError, match="'a' names two runs"):
        compare_curves([a, a], ["x1"], ["a", "a"])


def test_curve_cli_labels_missing_history_and_plot(tmp_path, msn_invoke):
    a = history(tmp_path / "a" / "memrm", {"epoch": 1, "val_miou_x1": 0.3}, {"epoch": 2})
    b = history(tmp_path / "b" / "meta", {"epoch": 1, "val_miou_x1": 0.2})
    png = tmp_path / "fig" / "f5.png"
    res = msn_invoke(
        "evaluate", "--compare", a, b, "--curve", "x1", "--labels", "MSN,U-Net", "--plot", png
    )
    assert res.exit_code == 0, res.output
    assert "MSN X1" in res.stdout and "U-Net X1" in res.stdout and "30.0" in res.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    res = msn_invoke("evaluate", "--compare", a, b, "--curve", "x1", "--labels", "MSN")
    assert res.exit_code == 2 and "--labels: 1 label(s) for 2 run(s)" in res.stderr
    res = msn_invoke("evaluate", "--compare", a, tmp_path / "c", "--curve", "x1")
    assert res.exit_code == 1 and f"{tmp_path / 'c'}: no history.jsonl here" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--curve", "x1"], "--curve"),
        (["--columns", "x1"], "--columns"),
        (["--title", "T"], "--title"),
        (["--plot", "p.png"], "--plot"),
        (["--compare", "{r}", "--plot", "p.png"], "--plot"),
        (["--compare", "{r}", "--curve", "x1", "--columns", "x1"], "--columns"),
        (["--compare", "{r}", "--columns", "x1,x9"], "--columns"),
        (["--compare", "{r}", "--columns", "x1,x1"], "--columns"),
        (["--compare", "{r}", "--curve", "x1,best"], "--curve"),
        (["--compare", "{s}", "--columns", "x1"], "--columns"),
        (["--compare", "{s}", "{s}", "--labels", "a,a"], "--labels"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, msn_invoke, args, option):
    r = write(tmp_path / "r.json", store("MSN", x1=0.5))
    s = write(
        tmp_path / "s.json",
        {"kind": "slides", "classes": ["a"], "n_slides": 1, "pooled": {"miou": 1, "iou": [1]}},
    )
    res = msn_invoke("evaluate", *[a.format(r=r, s=s) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"msn: error: {option}"), res.stderr


def test_slide_tables_keep_their_rows(tmp_path):
    s = {"kind": "slides", "method": "m", "classes": ["a"], "n_slides": 1}
    s["pooled"] = {"miou": 0.5, "iou": [0.5]}
    t = comparison([s, s], title="Slides")
    assert t.title == "Slides" and [r[0] for r in t.rows] == ["m", "m"]
    with pytest.raises(MsnUsageError, match="'x' given twice"):
        comparison([s, s], ["x", "x"])

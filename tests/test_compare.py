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


def test_runs_of_one_row_with_two_values_in_a_cell_give_mean_and_sd(tmp_path, msn_invoke):
    """(Was: runs that disagree are an error.) Two values in one cell are two seeds of it."""
    a = write(tmp_path / "a.json", store("A", x1=0.40, x2=0.30))
    b = write(tmp_path / "b.json", store("B", x1=0.40, x2=0.31))
    assert comparison([json.loads(a.read_text())] * 2, ["S", "S"]).rows[0][2:4] == [0.40, 0.30]
    t = compare_results([a, b], ["S", "S"])
    assert t.rows[0][2:4] == [0.40, pytest.approx(0.305)]
    assert t.cells()[0][2:4] == ["40.0 ± 0.0", "30.5 ± 0.7"]
    res = msn_invoke("evaluate", "--compare", a, b, "--labels", "S,S")
    assert res.exit_code == 0, res.output
    assert "30.5 ± 0.7" in res.stdout and "mean ± sd over 2 runs" in res.stdout
    # a hidden column does not matter
    assert compare_results([a, b], ["S", "S"], columns=["x1"]).cells() == [["S", "40.0 ± 0.0"]]


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
    with pytest.raises(MsnUsageError, match=f"RUNS: {a} given twice"):
        compare_curves([a, a / "history.jsonl"], ["x1"], ["a", "b"])


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
        (["--versus", "MSN,MSN"], "--versus"),
        (["--compare", "{r}", "--curve", "x1", "--versus", "MSN,MSN"], "--versus"),
        (["--compare", "{r}", "--versus", "MSN,X"], "--versus"),
        (["--compare", "{r}", "--json", "{r}"], "--json"),
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


@pytest.fixture
def seeds(tmp_path):
    """Three seeds of MSN (the third without a fusion) and one single-run BiSeNet row."""
    return [
        write(tmp_path / "s0.json", store("MSN", 15.62, 0.0137, x1=0.40, x2=0.50, x3=0.425,
                                          fusion=0.50)),
        write(tmp_path / "b.json", store("BiSeNet", 12.8, x1=0.401)),
        write(tmp_path / "s1.json", store("MSN", 15.62, 0.0137, x1=0.42, x2=0.50, x3=0.425,
                                          fusion=0.52)),
        write(tmp_path / "s2.json", store("MSN", 15.62, 0.0137, x1=0.47, x2=0.53, x3=0.425,
                                          fusion=None)),
    ]  # fmt: skip


def test_seeds_of_one_row_give_mean_and_sample_sd_in_every_output(seeds, tmp_path, msn_invoke):
    from msn_cli.evaluation.compare import Spread, write_tables

    t = compare_results(seeds, csv_path=tmp_path / "t.csv", markdown_path=tmp_path / "t.md")
    assert [r[0] for r in t.rows] == ["MSN", "BiSeNet"]  # at the first run's place
    msn = t.rows[0]
    assert msn[1] == 15.62  # parameters: the largest, no sd
    # X1: 0.40, 0.42, 0.47: mean 0.43, sd sqrt((0.03² + 0.01² + 0.04²) / 2) = sqrt(0.0013)
    assert msn[2] == pytest.approx(0.43) and t.spread[0][2].sd == pytest.approx(0.0013**0.5)
    assert t.spread[0][3] == Spread(pytest.approx(0.0003**0.5), 3)  # X2: 0.50, 0.50, 0.53
    assert t.spread[0][4] == Spread(0.0, 3)  # X3: the same number three times
    assert msn[5] == pytest.approx(0.51) and t.spread[0][5] == Spread(
        pytest.approx(0.02 / 2**0.5), 2
    )
    assert t.spread[1] == [None, None, Spread(None, 1), None, None, None]
    assert t.cells() == [
        ["MSN", "15.6", "43.0 ± 3.6", "51.0 ± 1.7", "42.5 ± 0.0", "51.0 ± 1.4 (n=2)"],
        ["BiSeNet", "12.8", "40.1 (n=1)", "-", "-", "-"],
    ]
    assert t.note == "mean ± sd over 3 runs; (n=k): over k runs"
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[4] == "| MSN | 15.6 | 43.0 ± 3.6 | 51.0 ± 1.7 | 42.5 ± 0.0 | 51.0 ± 1.4 (n=2) |"
    assert md[-2:] == ["", "mean ± sd over 3 runs; (n=k): over k runs"]
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "Method,# Parm (M),X1,X1 sd,X1 n,X2,X2 sd,X2 n,X3,X3 sd,X3 n,Fusion,Fusion sd,Fusion n",
        "MSN,15.62,43.00,3.61,3,51.00,1.73,3,42.50,0.00,3,51.00,1.41,2",
        "BiSeNet,12.8,40.10,,1,,,,,,,,,",
    ]
    write_tables(t, None, None, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["columns"] == t.columns and data["title"] == "mIoU (%) on split test"
    assert data["rows"][0]["Method"] == "MSN" and data["rows"][0]["# Parm (M)"] == 15.62
    assert data["rows"][0]["X1"] == {
        "mean": pytest.approx(0.43), "sd": pytest.approx(0.0013**0.5), "n": 3
    }  # fmt: skip
    assert data["rows"][1]["X1"] == {"mean": 0.401, "sd": None, "n": 1}
    assert data["rows"][1]["X2"] is None
    res = msn_invoke("evaluate", "--compare", *seeds, "--columns", "x1,fusion")
    assert res.exit_code == 0, res.output
    assert "43.0 ± 3.6" in res.stdout and "51.0 ± 1.4 (n=2)" in res.stdout
    assert "mean ± sd over 3 runs" in res.stdout


def test_one_run_per_cell_prints_as_before(bisenet, tmp_path):
    from msn_cli.evaluation.compare import write_tables

    t = compare_results(
        bisenet, ["BiSeNet", "MSN", "BiSeNet", "BiSeNet"], markdown_path=tmp_path / "t.md"
    )
    assert t.spread is None and t.note is None and t.runs == 1
    assert (tmp_path / "t.md").read_text() == (
        "mIoU (%) on split test\n\n"
        "| Method | # Parm (M) | X1 | X2 | X3 | Fusion |\n"
        "|:---|---:|---:|---:|---:|---:|\n"
        "| BiSeNet | 12.9 | 40.1 | 41.2 | 42.5 | - |\n"
        "| MSN | 15.6 | 46.4 | - | - | 47.6 |\n"
    )
    write_tables(t, None, None, tmp_path / "t.json")
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["X1"] == {"mean": 0.401, "sd": None, "n": 1} and row["Fusion"] is None


def test_branches_against_y1_columns(tmp_path, msn_invoke, capsys):
    from msn_cli.report import print_store_details

    r = store("MSN", x1=0.46, x2=0.47, x3=0.42, fusion=0.48)
    r["miou"].update({"x2@y1": 0.44, "x3@y1": 0.39})
    new, old = write(tmp_path / "new.json", r), write(tmp_path / "old.json", store("Old", x1=0.5))
    t = compare_results([new, old], columns=["x2", "x2y1", "x3", "x3y1", "fusion"])
    assert t.columns == ["Method", "X2", "S2′ vs Y1", "X3", "S3′ vs Y1", "Fusion"]
    assert t.cells() == [
        ["MSN", "47.0", "44.0", "42.0", "39.0", "48.0"],
        ["Old", "-", "-", "-", "-", "-"],  # written before S2′/S3′ were scored
    ]
    res = msn_invoke("evaluate", "--compare", new, old, "--columns", "x1,x2y1,x3y1")
    assert res.exit_code == 0, res.output
    assert "S2′ vs Y1" in res.stdout and "39.0" in res.stdout
    res = msn_invoke("evaluate", "--compare", new, "--columns", "x2y2")
    assert res.exit_code == 2 and "x2y1, x3y1" in res.stderr
    r["miou"]["x3@y1"] = "high"
    with pytest.raises(MsnError, match="miou.x3@y1 is 'high', not a number"):
        comparison([r], columns=["x3y1"])
    result = {
        "classes": ["a", "b"], "n_patches": 4, "split": "test",
        "iou": {"x1": [0.5, 0.25], "x2": [0.75, 1.0], "x3": None, "fusion": None,
                "x2@y1": [0.125, 0.375]},
        "confusion": {"x1": [[1, 0], [0, 1]], "x2": [[2, 0], [0, 2]], "x2@y1": [[3, 1], [0, 3]]},
    }  # fmt: skip
    print_store_details(result)
    out = capsys.readouterr().out
    assert "S2′ vs Y1" in out and "37.5" in out and "confusion S2′ vs Y1 (rows: truth)" in out
    assert "S3′" not in out


def test_versus_says_whether_two_rows_are_more_than_one_sd_apart(capsys):
    from msn_cli.evaluation.compare import versus
    from msn_cli.report import print_versus

    runs = [
        store(label, x1=v)
        for label, values in {
            "A": (0.80, 0.81, 0.79),  # mean 80, sd 1
            "B": (0.75, 0.77, 0.73),  # mean 75, sd 2
            "D": (0.82, 0.76, 0.79),  # mean 79, sd 3
            "E": (0.70,),
        }.items()
        for v in values
    ]
    t = comparison(runs, columns=["x1", "x2"])
    assert versus(t, "A", "B") == [
        "X1: A 80.0 ± 1.0 vs B 75.0 ± 2.0: +5.0, separated (sd 2.0)",
        "X2: A - vs B -: missing",
    ]
    assert versus(t, "A", "D", ["X1"]) == [
        "X1: A 80.0 ± 1.0 vs D 79.0 ± 3.0: +1.0, not separated (sd 3.0)"
    ]
    assert versus(t, "E", "A", ["X1"]) == ["X1: E 70.0 vs A 80.0 ± 1.0: -10.0, one run (no sd)"]
    with pytest.raises(MsnUsageError, match="no row 'Z'"):
        versus(t, "A", "Z")
    print_versus(t, "A", "B")
    assert capsys.readouterr().out.splitlines()[0].endswith("+5.0, separated (sd 2.0)")


def test_curves_of_seeds_share_columns_mean_and_sd(tmp_path):
    a0 = history(tmp_path / "s0" / "memrm", {"epoch": 1, "val_miou_x1": 0.30},
                 {"epoch": 2, "val_miou_x1": 0.40})  # fmt: skip
    a1 = history(tmp_path / "s1" / "memrm", {"epoch": 1, "val_miou_x1": 0.34})  # stopped early
    b = history(tmp_path / "b" / "meta", {"epoch": 1, "val_miou_x1": 0.2})
    png = tmp_path / "f.png"
    t = compare_curves([a0, b, a1], ["x1"], ["MSN", "U-Net", "MSN"], plot_path=png)
    assert t.columns == ["Epoch", "MSN X1", "U-Net X1"]
    assert t.rows == [[1, pytest.approx(0.32), 0.2], [2, 0.40, None]]
    assert t.cells() == [["1", "32.0 ± 2.8", "20.0 (n=1)"], ["2", "40.0 (n=1)", "-"]]
    assert t.note == "mean ± sd over 2 runs; (n=k): over k runs"
    assert png.stat().st_size > 5000  # the plot draws the means


def _shown(cell, runs):
    """A printed mIoU cell from its JSON ``{"mean", "sd", "n"}`` (``-`` for null)."""
    if cell is None:
        return "-"
    text = f"{100 * cell['mean']:.1f}"
    text += "" if cell["sd"] is None else f" ± {100 * cell['sd']:.1f}"
    return text + (f" (n={cell['n']})" if cell["n"] < runs else "")


def test_compare_json_writes_the_printed_table(seeds, tmp_path, msn_invoke):
    out = tmp_path / "table.json"
    cols = "params,x1,fusion"
    res = msn_invoke("evaluate", "--compare", *seeds, "--columns", cols, "--json", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    printed = compare_results(seeds, columns=cols.split(",")).cells()
    assert data["title"] == "mIoU (%) on split test"
    assert data["columns"] == ["Method", "# Parm (M)", "X1", "Fusion"]
    runs = max(c["n"] for r in data["rows"] for c in (r["X1"], r["Fusion"]) if c)
    assert runs == 3
    from_json = [
        [r["Method"], f"{r['# Parm (M)']:.1f}", _shown(r["X1"], runs), _shown(r["Fusion"], runs)]
        for r in data["rows"]
    ]
    assert (
        from_json
        == printed
        == [
            ["MSN", "15.6", "43.0 ± 3.6", "51.0 ± 1.4 (n=2)"],
            ["BiSeNet", "12.8", "40.1 (n=1)", "-"],
        ]
    )
    for cell in printed[0] + printed[1][:3]:
        assert cell in res.stdout
    assert data["rows"][0]["Fusion"] == {"mean": pytest.approx(0.51), "sd": pytest.approx(
        0.02 / 2**0.5), "n": 2}  # fmt: skip
    # one run per cell: n 1, sd null, as printed (no ±)
    one = tmp_path / "one.json"
    res = msn_invoke("evaluate", "--compare", seeds[0], seeds[1], "--json", one)
    assert res.exit_code == 0, res.output
    row = json.loads(one.read_text())["rows"][0]
    assert row["X1"] == {"mean": 0.40, "sd": None, "n": 1} and "±" not in res.stdout
    # never over an input run
    before = seeds[2].read_text()
    res = msn_invoke("evaluate", "--compare", *seeds, "--json", seeds[2])
    assert res.exit_code == 2 and seeds[2].read_text() == before
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--json" in lines[0] and "refusing to overwrite" in lines[0]


def test_compare_curve_json_and_its_histories_are_inputs(tmp_path, msn_invoke):
    a = history(tmp_path / "a" / "memrm", {"epoch": 1, "val_miou_x1": 0.3})
    b = history(tmp_path / "b" / "memrm", {"epoch": 1, "val_miou_x1": 0.4})
    out = tmp_path / "c.json"
    args = ["evaluate", "--compare", a, b, "--curve", "x1", "--labels", "S,S"]
    res = msn_invoke(*args, "--json", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["columns"] == ["Epoch", "S X1"] and data["rows"][0]["Epoch"] == 1
    assert data["rows"][0]["S X1"]["n"] == 2 and "35.0 ± 7.1" in res.stdout
    res = msn_invoke(*args, "--json", a / "history.jsonl")
    assert res.exit_code == 2 and "refusing to overwrite" in res.stderr
    assert json.loads((a / "history.jsonl").read_text())["val_miou_x1"] == 0.3


@pytest.fixture
def rows(tmp_path):
    """Runs whose rows differ in known ways (X1): A 80 ± 1, B 75 ± 2, D 79 ± 3 (three runs
    each), E 70 (one run), and a method name holding a comma."""
    values = {
        "A": (0.80, 0.81, 0.79),
        "B": (0.75, 0.77, 0.73),
        "D": (0.82, 0.76, 0.79),
        "E": (0.70,),
        "MSN (b, conv)": (0.60, 0.62),
    }
    return [
        write(tmp_path / f"{i}{k}.json", store(label, x1=v))
        for i, (label, vs) in enumerate(values.items())
        for k, v in enumerate(vs)
    ]


def test_versus_prints_row_a_against_row_b(rows, msn_invoke):
    def versus(pair, *more):
        res = msn_invoke("evaluate", "--compare", *rows, "--columns", "x1", "--versus", pair, *more)
        assert res.exit_code == 0, res.output
        return [line for line in res.stdout.splitlines() if line.startswith("X")]

    assert versus("A,B") == ["X1: A 80.0 ± 1.0 vs B 75.0 ± 2.0: +5.0, separated (sd 2.0)"]
    assert versus("A,D") == ["X1: A 80.0 ± 1.0 vs D 79.0 ± 3.0: +1.0, not separated (sd 3.0)"]
    assert versus("E,A") == ["X1: E 70.0 vs A 80.0 ± 1.0: -10.0, one run (no sd)"]
    assert versus("MSN (b, conv),E") == [
        "X1: MSN (b, conv) 61.0 ± 1.4 vs E 70.0: -9.0, one run (no sd)"
    ]
    res = msn_invoke("evaluate", "--compare", *rows, "--versus", "B,A")  # every mIoU column
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.startswith(("X", "Fusion"))]
    assert lines == [
        "X1: B 75.0 ± 2.0 vs A 80.0 ± 1.0: -5.0, separated (sd 2.0)",
        "X2: B - vs A -: missing",
        "X3: B - vs A -: missing",
        "Fusion: B - vs A -: missing",
    ]


@pytest.mark.parametrize("pair", ["A,Z", "A", "A,B,C", "A,A", ""])
def test_versus_of_a_row_not_in_the_table_is_one_line_naming_the_rows(
    rows, msn_invoke, tmp_path, pair
):
    out = tmp_path / "t.json"
    res = msn_invoke("evaluate", "--compare", *rows, "--versus", pair, "--json", out)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msn: error: --versus"), res.stderr
    assert "(rows: A, B, D, E, MSN (b, conv))" in lines[0]
    assert not out.exists()  # checked before anything is written

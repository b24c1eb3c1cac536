"""``examples/reproduce_tables.sh`` end to end at the smallest settings: every row of every
table of the paper (and the Fig. 5/6 curves) gets numbers; rerun with ``--seeds 2`` (one
table), every cell becomes mean ± sd."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "reproduce_tables.sh"
BASELINES = ["UNet", "PSPNet", "DeepLab-V3+", "BiSeNet"]
ROWS = {
    "table1": [
        *BASELINES,
        *["AWMF-CNN†", "AWMF-CNN‡", "AWMF-CNN† (fixed)", "AWMF-CNN‡ (fixed)"],
        *["MSN†", "MSN‡", "∗MSN†", "∗MSN‡"],
    ],
    "table2": ["DeepLab-V3+", "BiSeNet", "AWMF-CNN†", "AWMF-CNN† (fixed)", "MSN†", "∗MSN†"],
    "table3": ["Meta-branch", "Multi-branch", "MSN†", "∗MSN†"],
    "table4": ["on non-gap layers", "MSN†"],
    "table5-bach": ["w/o Meta", "AWMF-CNN", "MSN", "MSN (pseudo σ)"],
    "table5-isic": ["w/o Meta", "AWMF-CNN", "MSN", "MSN (pseudo σ)"],
}
HEADERS = {
    "table1": ["Method", "# Parm (M)", "X1", "X2", "X3", "Fusion"],
    "table3": ["Method", "X1", "X2", "X3", "S2′ vs Y1", "S3′ vs Y1", "Fusion"],
    "table5-bach": ["Method", "X1", "X2", "X3", "Fusion", "# F (M)"],
}
CURVES = {"fig5": 6, "fig6-bach": 4, "fig6-isic": 4}  # value columns
NUMBER = re.compile(r"^\d+(\.\d+)?(e-?\d+)?$")


def markdown_table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]  # header, rows (after the alignment line)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env={**base, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


def test_usage_errors_exit_2(tmp_path):
    res = run("--bogus", cwd=tmp_path)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr
    res = run("--help", cwd=tmp_path)
    assert res.returncode == 0 and "--paper" in res.stdout and "Table 4" in res.stdout
    res = run(env={"PRE_EPOCHS": "5", "META_EPOCHS": "2"}, cwd=tmp_path)
    assert res.returncode == 2 and "PRE_EPOCHS" in res.stderr
    res = run("--jobs", "0", cwd=tmp_path)
    assert res.returncode == 2 and "--jobs 0" in res.stderr
    res = run("--seeds", "0", cwd=tmp_path)
    assert res.returncode == 2 and "--seeds 0: need a whole number >= 1" in res.stderr
    res = run("--tables", "3,6", cwd=tmp_path)
    assert res.returncode == 2 and "--tables 3,6: need table numbers 1-5" in res.stderr
    res = run("--store", "bach.zarr", "--tables", "2", cwd=tmp_path)
    assert res.returncode == 2 and "Table 2 needs --isic-store" in res.stderr
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "settings.txt").write_text("size=8192 ...\n")
    res = run("--out", "old", cwd=tmp_path)
    assert res.returncode == 2 and "made with other settings" in res.stderr
    assert not (tmp_path / "tables").exists()


def test_every_row_of_every_table_has_numbers(tmp_path):
    out = tmp_path / "out"
    tiny = {
        "SIZE": "256", "SLIDES": "3", "ISIC_SIZE": "256", "PATCH": "32", "WIDTH": "0.125",
        "BATCH": "8", "META_EPOCHS": "1", "PRE_EPOCHS": "1", "ALT_EPOCHS": "2",
        "FIXED_EPOCHS": "1", "EPOCHS": "1", "DEVICE": "cpu", "WORKERS": "0",
    }  # fmt: skip
    res = run("--out", str(out), "--jobs", "2", env=tiny, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Table 1" in res.stdout and "Fig. 6" in res.stdout  # printed side by side
    assert (out / "logs" / "bach-pspnet-x2.log").stat().st_size > 0
    for name, rows in ROWS.items():
        header, body = markdown_table(out / "tables" / f"{name}.md")
        if name in HEADERS:
            assert header == HEADERS[name], name
        assert [r[0] for r in body] == rows, name
        for row in body:
            values = dict(zip(header, row, strict=True))
            single = name in ("table1", "table2") and row[0] in BASELINES
            for col, v in values.items():
                if col == "Method":
                    continue
                if single and col == "Fusion":
                    assert v == "-", (name, row)  # the paper's "-": no fusion
                else:
                    assert NUMBER.match(v), (name, row, col)
    for name, columns in CURVES.items():
        header, body = markdown_table(out / "tables" / f"{name}.md")
        assert header[0] == "Epoch" and len(header) == 1 + columns, (name, header)
        assert [r[0] for r in body] == ["1"], name  # one epoch each at these settings
        for c in range(1, len(header)):
            assert any(NUMBER.match(r[c]) for r in body), (name, header[c])
        assert (out / "tables" / f"{name}.png").stat().st_size > 1000
    isic = json.loads((out / "results" / "isic-msn-bisenet.json").read_text())
    assert isic["classes"] == ["normal", "lesion"]  # the photographs' PNG masks, 255 = lesion
    assert sum(isic["confusion"]["x1"][1]) > 0  # lesion pixels are scored, not ignored
    alternated = (out / "ckpt" / "bach-awmf-bisenet" / "fusion" / "history.jsonl").read_text()
    assert '"trained": "fusion"' in alternated and '"trained": "experts"' in alternated
    assert (out / "tables.md").read_text().count("Table ") == 6
    fit = {  # Table 3's rows fit their fusions on the same patches, for as many steps
        name: json.loads((out / "ckpt" / name / "fusion" / "config.json").read_text())
        for name in ("bach-meta-branch", "bach-multi-branch", "bach-msn-bisenet")
    }
    assert len({(c["fit_patches"], c["epochs"], c["fusion_init"]) for c in fit.values()}) == 1
    pseudo = json.loads((out / "ckpt" / "bach-t5-pseudo" / "model.json").read_text())
    assert pseudo["model"]["sigma"] == "pseudo" and pseudo["model"]["fusion"] == "meta"
    configs = sorted((out / "ckpt").glob("*/*/config.json"))
    assert len(configs) > 40
    for config in configs:  # validation never looks at the test split
        assert json.loads(config.read_text()).get("val_split") != "test", config

    # --seeds 2 in the same folder: seed 0 is kept, seed 1 trained beside it (only what
    # Table 4 needs), and every cell becomes mean ± sd over the two
    weights = {p: p.stat().st_mtime_ns for p in (out / "ckpt").glob("*/*/weights.pt")}
    res = run("--out", str(out), "--jobs", "2", "--seeds", "2", "--tables", "4", env=tiny,
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "seed1/bach-nongap: started" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in weights} == weights  # seed 0 not retrained
    seed1 = out / "seed1"
    assert sorted(p.name for p in (seed1 / "ckpt").iterdir()) == [
        "bach-bisenet-x3", "bach-bisenet-x3-pre", "bach-msn-bisenet", "bach-nongap"
    ]  # fmt: skip
    config = json.loads((seed1 / "ckpt" / "bach-nongap" / "memrm" / "config.json").read_text())
    assert config["seed"] == 1 and config["val_split"] == "sub-train"
    assert (seed1 / "logs" / "bach-nongap.log").stat().st_size > 0
    header, body = markdown_table(out / "tables" / "table4.md")
    assert header == ["Method", "X1", "X2", "X3", "Fusion"]
    assert [r[0] for r in body] == ["on non-gap layers", "MSN†"]
    for row in body:
        for cell in row[1:]:
            mean, sd = cell.split(" ± ")  # every cell: mean ± sd over both seeds
            assert NUMBER.match(mean) and NUMBER.match(sd), row
    scores = [json.loads((d / "results" / "bach-nongap.json").read_text()) for d in (out, seed1)]
    x1 = [s["miou"]["x1"] for s in scores]
    mean, sd = sum(x1) / 2, abs(x1[0] - x1[1]) / 2**0.5  # the sample sd of two numbers
    shown = [float(v) for v in body[0][1].split(" ± ")]
    assert shown == pytest.approx([100 * mean, 100 * sd], abs=0.0501)  # printed to 0.1
    assert (out / "tables" / "table4.md").read_text().rstrip().endswith("mean ± sd over 2 runs")
    assert (out / "tables.md").read_text().count("Table ") == 1  # what this run built

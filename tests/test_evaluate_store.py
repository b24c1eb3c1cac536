"""``msn evaluate`` store mode: outputs per finished stage, JSON keys, parameters, figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import random_checkpoints
from slides import pattern, write_pyramid

from msn_cli.evaluation.figures import parse_gap_stats
from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.io.dataset import PatchDataset
from msn_cli.io.patches import Levels
from msn_cli.metrics import ConfusionMatrix
from msn_cli.models.layers import count_parameters
from msn_cli.models.msn import MSN
from msn_cli.runtime import to_input
from msn_cli.stages.evaluate import evaluate_store
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.vocab import BRANCHES

CLASSES = ("a", "b", "c", "d")
SQ = np.array([[20, 16], [150, 16], [150, 120], [20, 120]], float)
TRI = np.array([[100, 60], [210, 140], [60, 150]], float)


def make_store(d: Path) -> str:
    """Two slides (train, test) of 4 classes, patch 32 at 4x 2x 1x."""
    jobs = []
    for i, split in enumerate(["train", "test"]):
        write_pyramid(d / f"e{i}.tif", pattern(224 + 32 * i, 160, seed=i))
        polys = [LabelledPolygon(1 + i, "b", SQ), LabelledPolygon(3, "d", TRI)]
        write_geojson(d / f"e{i}.geojson", polys)
        jobs.append(SlideJob(d / f"e{i}.tif", split=split))
    cfg = TileConfig(Levels.parse("4x 2x 1x"), CLASSES, patch_size=32, min_tissue=0)
    tile(str(d / "st.zarr"), jobs, cfg)
    return str(d / "st.zarr")


HISTORY = {
    "meta": [{"epoch": e, "loss": 1.0 / e, "miou": 0.1 * e, "seconds": 1.0} for e in (1, 2, 3)],
    "memrm": [
        {"epoch": e, "loss": 0.9 / e, "miou": {"x1": 0.1 * e, "x2": 0.12 * e}, "seconds": 2.0}
        for e in (1, 2)
    ],
    "fusion": [  # the keys the training loop writes
        {
            "epoch": 1,
            "loss": 0.5,
            "train_miou_fusion": 0.3,
            "val_miou_fusion": 0.4,
            "seconds": 1.0,
            "patches_per_s": 100.0,
        }
    ],
}


def make_checkpoints(d: Path, stages=("meta", "memrm", "fusion"), seed: int = 0) -> str:
    """A checkpoint directory with random-init weights for ``stages`` and their histories."""
    random_checkpoints(d, stages, seed, CLASSES, histories=HISTORY, magnifications=(4, 2, 1))
    return str(d)


def copy_stages(src: str, dst: Path, stages) -> str:
    """A copy of ``src`` with only ``stages``."""
    dst.mkdir(parents=True)
    shutil.copy(Path(src) / "model.json", dst / "model.json")
    for s in stages:
        shutil.copytree(Path(src) / s, dst / s)
    return str(dst)


KEYS = {"kind", "method", "split", "n_patches", "classes", "params_m", "miou", "iou", "confusion"}
KEYS |= {"pixels", "outputs", "stages", "backbone", "fusion_type", "input", "checkpoints", "store"}
KEYS |= {"schema_version", "fusion_params_m", "branches", "weights", "weight_files"}
KEYS |= {"weight_epochs"}
OUTS = {"x1", "x2", "x3", "fusion"}
ALIGNED = {"x2@y1", "x3@y1"}  # S2′, S3′ against Y1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    store = make_store(d)
    full = make_checkpoints(d / "ck")
    return d, store, full


def _independent_scores(store, ck_path, use_forward):
    """Confusion matrices computed without msn.evaluation: whole-model forward or meta-branch;
    S2′, S3′ (``x2@y1``, ``x3@y1``): X2's, X3's logits aligned into X1's frame, against Y1."""
    model, stages = CheckpointDir(ck_path).load_model("cpu")
    card = CheckpointDir(ck_path).read_card()
    ds = PatchDataset(store, split="test")
    batch = torch.utils.data.default_collate(ds.__getitems__(list(range(len(ds)))))
    xs = [to_input(batch[b], torch.device("cpu")) for b in ("x1", "x2", "x3")]
    cms = {}
    with torch.no_grad():
        if use_forward:
            out = model(*xs)
            preds = {"x1": out.s1, "x2": out.s2, "x3": out.s3, "fusion": out.s}
        else:
            preds = {
                b: model.meta_branch(x).logits for b, x in zip(("x1", "x2", "x3"), xs, strict=True)
            }
        size = batch["y1"].shape[-2:]
        preds |= {f"{b}@y1": model.align(preds[b], b, size) for b in ("x2", "x3")}
    targets = {"x1": "y1", "x2": "y2", "x3": "y3", "fusion": "y1", "x2@y1": "y1", "x3@y1": "y1"}
    for o, logits in preds.items():
        cm = ConfusionMatrix(len(card.classes))
        cm.update(logits.argmax(1), batch[targets[o]])
        cms[o] = cm.matrix.tolist()
    return cms, len(ds)


def test_full_msn_scores_every_output_like_the_model_forward(setup):
    d, store, full = setup
    result, written = evaluate_store(store, full, split="test", batch_size=7, device="cpu")
    assert written == []
    assert set(result) == KEYS and result["kind"] == "store"
    for key in ("miou", "iou", "confusion", "pixels"):
        assert set(result[key]) == OUTS | ALIGNED
        assert all(v is not None for v in result[key].values())
    expected, n = _independent_scores(store, full, use_forward=True)
    assert result["n_patches"] == n and result["split"] == "test"
    assert result["confusion"] == expected
    for o in OUTS | ALIGNED:
        cm = ConfusionMatrix(4)
        cm.matrix = np.array(expected[o])
        assert result["miou"][o] == pytest.approx(cm.miou())
        assert len(result["iou"][o]) == 4
    model = MSN(CheckpointDir(full).read_card().config())
    assert result["params_m"] == pytest.approx(count_parameters(model) / 1e6)
    assert result["method"] == "MSN (bisenet)" and result["classes"] == list(CLASSES)


def test_meta_only_reports_the_meta_branch_on_every_input(setup):
    d, store, full = setup
    meta = copy_stages(full, d / "meta_only", ["meta"])
    result, _ = evaluate_store(store, meta, device="cpu", method="Meta-branch")
    expected, _ = _independent_scores(store, meta, use_forward=False)
    assert result["confusion"] == {**expected, "fusion": None}
    assert result["miou"]["fusion"] is None and result["iou"]["fusion"] is None
    assert result["outputs"] == ["x1", "x2", "x3"] and result["method"] == "Meta-branch"
    model = MSN(CheckpointDir(full).read_card().config())
    assert result["params_m"] == pytest.approx(count_parameters(model.meta_branch) / 1e6)


def test_memrm_without_fusion_has_branches_only(setup):
    d, store, full = setup
    memrm = copy_stages(full, d / "memrm_only", ["meta", "memrm"])
    result, _ = evaluate_store(store, memrm, device="cpu")
    full_result, _ = evaluate_store(store, full, device="cpu")
    assert result["miou"]["fusion"] is None and result["method"].startswith("MSN w/o fusion")
    for o in ("x1", "x2", "x3"):  # the same branches as the full model's
        assert result["confusion"][o] == full_result["confusion"][o]


def test_cli_json_tables_figures_and_repeatability(setup, msn_invoke, tmp_path):
    d, store, full = setup
    ck = tmp_path / "ck"
    shutil.copytree(full, ck)
    stats = {  # what train-memrm writes (training/gaps.py)
        "patches": 10,
        "layers": {
            f"l{i}": {
                **{s: {"mean": i / k, "variance": k + i} for k, s in enumerate(BRANCHES, 1)},
                "gap_x1": i,
                "gap_x2": 1.0,
                "score": i + 1.0,
            }
            for i in range(5)
        },
        "chosen": ["l1", "l3"],
        "top_k": 2,
    }
    (ck / "memrm" / "gap_layers.json").write_text(json.dumps(stats))
    runs = []
    for k in range(2):
        out = tmp_path / f"r{k}.json"
        args = ["evaluate", "--store", store, "--checkpoints", ck, "--device", "cpu"]
        args += ["--json", out, "--batch-size", "16"]
        if k == 0:
            args += ["--figures", tmp_path / "figs", "--figure-patches", "3"]
            args += ["--markdown", tmp_path / "t.md", "--csv", tmp_path / "t.csv"]
        res = msn_invoke(*args)
        assert res.exit_code == 0, res.output
        runs.append(out.read_text())
    assert runs[0] == runs[1]  # identical numbers (and bytes) for identical inputs
    assert "# Parm (M)" in res.stdout and "Fusion" in res.stdout
    md = (tmp_path / "t.md").read_text()
    assert "| Method | # Parm (M) | X1 | X2 | X3 | Fusion |" in md and "MSN (bisenet)" in md
    assert (tmp_path / "t.csv").read_text().startswith("Method,# Parm (M),X1,X2,X3,Fusion\n")
    names = {"training_meta.png", "training_memrm.png", "training_fusion.png"}
    names |= {"gap_layers.png", "patches.png"}
    for name in names:
        f = tmp_path / "figs" / name
        assert f.is_file() and f.stat().st_size > 1000, name
    res = msn_invoke("evaluate", "--compare", tmp_path / "r0.json", tmp_path / "r1.json")
    assert res.exit_code == 0 and res.stdout.count("MSN (bisenet)") == 1  # same label: merged
    res = msn_invoke(
        "evaluate", "--compare", tmp_path / "r0.json", tmp_path / "r1.json", "--labels", "a,b"
    )
    assert res.exit_code == 0 and "MSN (bisenet)" not in res.stdout


def test_figures_without_gap_stats_warn_and_write_the_rest(setup, tmp_path):
    from msn_cli.evaluation.figures import FigureWarning, write_figures

    d, store, full = setup
    with pytest.warns(FigureWarning, match="gap_layers.json: not found"):
        written = write_figures(tmp_path / "f", full)
    assert sorted(p.name for p in written) == [
        "training_fusion.png",
        "training_memrm.png",
        "training_meta.png",
    ]


def test_gap_stats_of_train_memrm():
    data = {
        "layers": {"a": {"x1": {"mean": 1, "variance": 4}, "x2": {"mean": 2, "variance": 5},
                         "x3": {"mean": 3, "variance": 6}, "gap_x1": 1, "score": 2},
                   "b": {"x1": {"mean": 1, "variance": 1}, "x2": {"mean": 1, "variance": 1},
                         "x3": {"mean": 1, "variance": 1}, "gap_x1": 1, "score": 3}},
        "chosen": ["b"], "top_k": 1, "patches": 3,
    }  # fmt: skip
    s = parse_gap_stats(data)
    assert s is not None and s.layers == ["a", "b"] and s.gap_layers == ["b"]
    assert s.mean["x2"] == [2.0, 1.0] and s.var["x3"] == [6.0, 1.0] and s.score == [2.0, 3.0]
    assert parse_gap_stats({"something": 1}) is None
    assert parse_gap_stats({"layers": {"a": {"score": 1}}, "chosen": []}) is None


def test_bad_checkpoints_and_mismatched_store_are_one_line_errors(setup, msn_invoke, tmp_path):
    d, store, full = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(Path(full) / "model.json", empty / "model.json")
    res = msn_invoke("evaluate", "--store", store, "--checkpoints", empty, "--device", "cpu")
    assert res.exit_code != 0 and "run `msn train-meta`" in res.stderr
    other = tmp_path / "other"
    other.mkdir()
    card = CheckpointDir(full).read_card()
    CheckpointDir(other).write_card(ModelCard(card.model, ["p", "q", "r", "s"]))
    res = msn_invoke("evaluate", "--store", store, "--checkpoints", other)
    assert res.exit_code != 0 and "do not match" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = msn_invoke("evaluate", "--store", store, "--checkpoints", full, "--split", "val")
    assert res.exit_code != 0 and "--split" in res.stderr


def test_outputs_limits_what_is_scored(setup, msn_invoke, tmp_path):
    d, store, full = setup
    every, _ = evaluate_store(store, full, split="test", batch_size=16, device="cpu")
    only, _ = evaluate_store(store, full, split="test", device="cpu", outputs=["x3", "x1"])
    assert only["outputs"] == ["x1", "x3"] and only["miou"]["x2"] is None
    assert only["miou"]["x3"] == every["miou"]["x3"] and only["miou"]["fusion"] is None
    assert only["miou"]["x3@y1"] == every["miou"]["x3@y1"] and only["miou"]["x2@y1"] is None
    args = ["evaluate", "--store", store, "--checkpoints", full, "--device", "cpu"]
    res = msn_invoke(*args, "--outputs", "x3,x9")
    assert res.exit_code == 2 and "--outputs" in res.stderr and "x1, x2, x3, fusion" in res.stderr
    res = msn_invoke(*args, "--outputs", "x2", "--json", tmp_path / "x2.json")
    assert res.exit_code == 0 and json.loads((tmp_path / "x2.json").read_text())["outputs"] == [
        "x2"
    ]


def test_branches_against_y1_are_their_maps_aligned_into_x1s_frame(setup, tmp_path):
    """S2′ (``x2@y1``): the X2 branch's logits cropped to X1's field of view and upsampled
    (``model.align``), argmax, one confusion matrix against Y1; likewise S3′. Single-input
    baselines and experts have them only where the output exists."""
    d, store, full = setup
    result, _ = evaluate_store(store, full, split="test", batch_size=5, device="cpu")
    model, _ = CheckpointDir(full).load_model("cpu")
    ds = PatchDataset(store, split="test")
    batch = torch.utils.data.default_collate(ds.__getitems__(list(range(len(ds)))))
    xs = [to_input(batch[b], torch.device("cpu")) for b in BRANCHES]
    with torch.no_grad():
        out = model(*xs)
    y1 = batch["y1"]
    for key, which, logits in (("x2@y1", "x2", out.s2), ("x3@y1", "x3", out.s3)):
        s = model.align(logits, which, y1.shape[-2:])
        assert s.shape[-2:] == out.s.shape[-2:]  # X1's pixels, like the fusion
        cm = ConfusionMatrix(len(CLASSES))
        cm.update(s.argmax(1), y1)
        assert result["confusion"][key] == cm.matrix.tolist(), key
        assert result["miou"][key] == pytest.approx(cm.miou())
        assert result["pixels"][key] == result["pixels"]["x1"] == result["pixels"]["fusion"]
    # a single-input baseline: only its own input's output, aligned when it is X2 or X3
    meta = copy_stages(full, tmp_path / "meta", ["meta"])
    every, _ = evaluate_store(store, meta, device="cpu")
    for x in ("x1", "x2"):
        base = copy_stages(full, tmp_path / x, ["meta"])
        card = CheckpointDir(base).read_card()
        CheckpointDir(base).write_card(ModelCard(card.model, card.classes, input=x))
        only, _ = evaluate_store(store, base, device="cpu")
        assert only["outputs"] == [x] and only["miou"]["x3@y1"] is None
        if x == "x2":  # the same meta-branch on X2 as the meta-only checkpoint's
            assert only["confusion"]["x2@y1"] == every["confusion"]["x2@y1"] is not None
        else:
            assert only["miou"]["x2@y1"] is None and only["confusion"]["x2@y1"] is None
    # independent experts: every branch, so both
    experts, _ = random_checkpoints(
        tmp_path / "experts", None, 1, CLASSES, magnifications=(4, 2, 1), branches="independent"
    )
    res, _ = evaluate_store(store, str(experts.path), device="cpu")
    assert res["miou"]["x2@y1"] is not None and res["miou"]["x3@y1"] is not None

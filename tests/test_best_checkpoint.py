"""Model selection: ``best.pt`` by validation mIoU, later stages built on it, ``--weights``.

Validation scores are scripted (``validate`` replaced) where a test needs a peak at a known
epoch; the SIGKILL test runs real validation in real processes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
from slides import pattern, write_pyramid
from test_train_support import FAST, cli, kill_in_second_epoch, make_store, same_weights

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.evaluation.store import evaluate_store
from msn_cli.io.checkpoints import CheckpointDir, load_checkpoint_file, weights_sha256
from msn_cli.prediction.config import PredictConfig
from msn_cli.prediction.predictor import Predictor
from msn_cli.stages.train_memrm import train_memrm
from msn_cli.stages.train_meta import train_meta
from msn_cli.training import trainer
from msn_cli.training.config import MemRMConfig, MetaConfig
from msn_cli.training.loop import best_epoch, val_score

TINY = {"batch_size": 4, "workers": 0, "threads": 1, "device": "cpu"}
META = {"width": 0.125, **TINY}


def script(mp: pytest.MonkeyPatch, scores: list) -> None:
    """Each validation returns the next of ``scores`` (a number for every output, or a dict
    output -> number)."""
    queue = list(scores)

    def validate(model, stages, card, loader, outputs, ctx):
        s = queue.pop(0)
        return {o: float(s[o] if isinstance(s, dict) else s) for o in outputs}

    mp.setattr(trainer, "validate", validate)


def meta(store, ck, epochs: int, scores=None, mp=None, **kw):
    n = torch.get_num_threads()
    try:
        if scores is not None:
            script(mp, scores)
        return train_meta(MetaConfig(store, str(ck), epochs=epochs, **{**META, **kw}))
    finally:
        torch.set_num_threads(n)


def memrm(store, ck, epochs: int, scores, mp, **kw):
    n = torch.get_num_threads()
    try:
        script(mp, scores)
        cfg = MemRMConfig(store, str(ck), epochs=epochs, val_split="sub-train", **{**TINY, **kw})
        return train_memrm(cfg)
    finally:
        torch.set_num_threads(n)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("best-store"))


@pytest.fixture(scope="module")
def pipeline(store, tmp_path_factory):
    """meta: 3 epochs peaking at epoch 2; memrm on it: 2 epochs peaking at epoch 1."""
    d = tmp_path_factory.mktemp("best-pipeline")
    ck = d / "ck"
    with pytest.MonkeyPatch.context() as mp:
        meta(store, ck, 3, [0.2, 0.5, 0.3], mp)
        memrm(store, ck, 2, [{"x1": 0.6, "x2": 0.4}, {"x1": 0.3, "x2": 0.5}], mp, holdout=0.5)
    return store, ck


def test_the_best_epoch_is_the_highest_score_ties_keep_the_earlier():
    h = [{"epoch": e, "val_miou_x1": a, "val_miou_x2": b} for e, a, b in
         [(1, 0.2, 0.2), (2, 0.6, 0.2), (3, 0.3, 0.5), (4, float("nan"), 0.9)]]  # fmt: skip
    assert best_epoch(h, ("x1", "x2")) == (2, 0.4)  # epoch 3 ties at 0.4: the earlier stays
    assert best_epoch(h, ("x2",)) == (4, 0.9)
    assert best_epoch(h, ("x1",)) == (2, 0.6)  # NaN never wins
    assert best_epoch([{"epoch": 1, "loss": 1.0}], ("x3",)) is None  # no validation
    assert val_score({"val_miou_x1": float("nan")}, ("x1",)) is None
    assert math.isclose(val_score({"val_miou_fusion": 0.25}, ("fusion",)), 0.25)


def test_best_pt_holds_the_epoch_where_validation_peaked(store, tmp_path, monkeypatch):
    peak = [0.2, 0.5, 0.3]  # Fig. 5's shape: better at epoch 2 than at the end
    meta(store, tmp_path / "a", 3, peak, monkeypatch)
    meta(store, tmp_path / "b", 2, peak[:2], monkeypatch)  # the same run, stopped at epoch 2
    st = CheckpointDir(tmp_path / "a").stage("meta")
    history = st.read_history()
    assert [r["val_miou_x3"] for r in history] == peak
    info = st.read_best()
    assert (info["epoch"], info["score"]) == best_epoch(history, ("x3",)) == (2, 0.5)
    assert info["select"] == ["x3"] and info["split"] == "sub-train" and info["epochs"] == 3
    assert same_weights(st.best, tmp_path / "b" / "meta" / "weights.pt")
    assert not same_weights(st.best, st.weights)  # weights.pt is still the final epoch's
    assert torch.load(st.last, weights_only=True)["best"]["epoch"] == 2
    assert CheckpointDir(tmp_path / "a").weight_files() == {"meta": st.best}


def test_a_resumed_run_chooses_like_an_uninterrupted_one(store, tmp_path, monkeypatch):
    scores = [0.5, 0.3, 0.4]  # the best epoch is long gone when the run resumes
    meta(store, tmp_path / "ref", 3, scores, monkeypatch)
    meta(store, tmp_path / "ck", 2, scores[:2], monkeypatch)
    st = CheckpointDir(tmp_path / "ck").stage("meta")
    first = weights_sha256(st.best)
    meta(store, tmp_path / "ck", 3, scores[2:], monkeypatch)  # resumes from last.pt
    ref = CheckpointDir(tmp_path / "ref").stage("meta")
    assert same_weights(st.best, ref.best) and same_weights(st.weights, ref.weights)
    assert st.read_best() == ref.read_best() and st.read_best()["epoch"] == 1
    assert weights_sha256(st.best) == first  # no better epoch: best.pt not even rewritten


def test_without_validation_the_best_is_the_final_epoch(store, tmp_path):
    meta(store, tmp_path / "ck", 2, val_split=None)
    st = CheckpointDir(tmp_path / "ck").stage("meta")
    info = st.read_best()
    assert info["epoch"] == 2 and info["score"] is None and info["split"] is None
    assert "no validation split" in info["reason"]
    assert same_weights(st.best, st.weights)


def test_val_split_test_is_refused(store, tmp_path, msn_invoke):
    ck = tmp_path / "ck"
    args = ["train-meta", "--store", store, "--checkpoints", ck, *FAST, "--val-split", "test"]
    res = msn_invoke(*args)
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "--val-split" in err[0] and "test split" in err[0], err
    assert not ck.exists()
    for cfg in (MetaConfig(store, str(ck), val_split="test"), MemRMConfig(store, str(ck))):
        cfg.val_split = "test"
        with pytest.raises(MsnUsageError, match="never sees the test split"):
            cfg.validate()


def test_later_stages_train_on_the_best_and_load_what_they_were_trained_on(pipeline):
    store, path = pipeline
    ck = CheckpointDir(path)
    meta_st, memrm_st = ck.stage("meta"), ck.stage("memrm")
    assert memrm_st.read_config()["base"] == {"meta": weights_sha256(meta_st.best)}
    assert memrm_st.read_best()["epoch"] == 1 and memrm_st.read_best()["score"] == 0.5
    assert memrm_st.read_best()["select"] == ["x1", "x2"]
    assert ck.weight_files(weights="best") == {"meta": meta_st.best, "memrm": memrm_st.best}
    # last: memrm's final epoch, on the meta-branch it was trained on (meta's best.pt)
    assert ck.weight_files(weights="last") == {"meta": meta_st.best, "memrm": memrm_st.weights}
    best, _ = ck.load_model(weights="best")
    last, _ = ck.load_model(weights="last")
    meta_best = load_checkpoint_file(meta_st.best)
    for model in (best, last):
        assert states_equal(model.meta_branch.state_dict(), meta_best)
    assert states_equal(best.memory_recall.state_dict(), load_checkpoint_file(memrm_st.best))
    assert states_equal(last.memory_recall.state_dict(), load_checkpoint_file(memrm_st.weights))
    assert not states_equal(best.memory_recall.state_dict(), last.memory_recall.state_dict())


def test_evaluate_and_predict_take_weights_best_or_last(pipeline, tmp_path, msn_invoke):
    store, ck = pipeline
    res = {}
    for which in ("best", "last"):
        res[which], _ = evaluate_store(store, str(ck), device="cpu", weights=which)
    assert res["best"]["weights"] == "best" and res["last"]["weights"] == "last"
    assert res["best"]["weight_files"] == {"meta": "meta/best.pt", "memrm": "memrm/best.pt"}
    assert res["last"]["weight_files"] == {"meta": "meta/best.pt", "memrm": "memrm/weights.pt"}
    assert res["best"]["weight_epochs"] == {"meta": 2, "memrm": 1}
    assert res["last"]["weight_epochs"] == {"meta": 2, "memrm": 2}
    assert res["best"]["miou"]["x3"] == res["last"]["miou"]["x3"]  # the same meta-branch
    js = tmp_path / "r.json"
    cmd = ["evaluate", "--store", store, "--checkpoints", ck, "--device", "cpu", "--workers", "0"]
    out = msn_invoke(*cmd, "--weights", "last", "--json", js)
    assert out.exit_code == 0, out.output
    assert json.loads(js.read_text())["weight_files"]["memrm"] == "memrm/weights.pt"
    assert msn_invoke(*cmd, "--weights", "final").exit_code == 2
    slide_mode = msn_invoke("evaluate", "--pred", js, "--truth", js, "--weights", "last")
    assert slide_mode.exit_code == 2 and "store mode" in slide_mode.stderr

    predictors = {
        w: Predictor(PredictConfig(ck, device="cpu", weights=w)) for w in ("best", "last")
    }
    assert predictors["best"].files["memrm"].name == "best.pt"
    assert predictors["last"].files["memrm"].name == "weights.pt"
    assert predictors["best"].key != predictors["last"].key  # a finished mask is not reused
    slide = tmp_path / "s.tif"
    write_pyramid(slide, pattern(200, 150), (1, 4))
    pred = ["predict", slide, "--checkpoints", ck, "--min-tissue", "0", "--device", "cpu"]
    for which in ("best", "last"):
        out = msn_invoke(*pred, "--out", tmp_path / f"{which}.tif", "--weights", which)
        assert out.exit_code == 0, out.output
    bad = msn_invoke(*pred, "--out", tmp_path / "x.tif", "--weights", "final")
    assert bad.exit_code == 2 and "--weights" in bad.stderr


def test_training_an_earlier_stage_further_is_stale_only_if_its_best_changes(
    pipeline, tmp_path, monkeypatch
):
    store, src = pipeline
    shutil.copytree(src, tmp_path / "ck")
    ck = CheckpointDir(tmp_path / "ck")
    before = weights_sha256(ck.stage("meta").best)
    meta(store, ck.path, 4, [0.45], monkeypatch)  # epoch 4 is no better than epoch 2
    assert weights_sha256(ck.stage("meta").best) == before
    ck.load_model()  # memrm still stands on the meta-branch it was trained on
    meta(store, ck.path, 5, [0.9], monkeypatch)  # epoch 5 is: meta's best.pt changes
    assert ck.stage("meta").read_best()["epoch"] == 5
    with pytest.raises(MsnError, match=r"stage 'memrm' is stale.*meta/best\.pt"):
        ck.load_model()
    with pytest.raises(MsnError, match="stage 'memrm' is stale"):
        memrm(store, ck.path, 2, [], monkeypatch, holdout=0.5)


def test_a_directory_without_best_pt_falls_back_to_weights_pt(pipeline, tmp_path, caplog):
    _, src = pipeline
    shutil.copytree(src, tmp_path / "ck")
    ck = CheckpointDir(tmp_path / "ck")
    for s in ("meta", "memrm"):  # as msn wrote it before best.pt: built on weights.pt
        ck.stage(s).best.unlink()
        ck.stage(s).best_json.unlink()
    config = ck.stage("memrm").read_config()
    config["base"] = {"meta": weights_sha256(ck.stage("meta").weights)}
    ck.stage("memrm").write_config(config)
    with caplog.at_level(logging.INFO, logger="msn"):
        ck.load_model(weights="best")
    said = [r.getMessage() for r in caplog.records if "best.pt" in r.getMessage()]
    assert len(said) == 1 and "memrm" in said[0] and "weights.pt" in said[0], said
    assert ck.loaded == {"meta": ck.stage("meta").weights, "memrm": ck.stage("memrm").weights}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="msn"):
        ck.load_model(weights="last")
    assert not [r for r in caplog.records if "best.pt" in r.getMessage()]


def test_sigkill_then_rerun_keeps_the_best_pt_of_an_uninterrupted_run(store, tmp_path):
    args = ["--store", store, *FAST, "--width", "0.125", "--epochs", "3"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    kill_in_second_epoch(killed / "meta", "train-meta", "--checkpoints", killed, *args)
    cli("train-meta", "--checkpoints", killed, *args)
    cli("train-meta", "--checkpoints", ref, *args)
    a, b = (CheckpointDir(p).stage("meta") for p in (killed, ref))
    assert same_weights(a.best, b.best) and same_weights(a.weights, b.weights)
    assert a.read_best() == b.read_best()
    assert a.read_best()["epoch"] == best_epoch(b.read_history(), ("x3",))[0]

"""``train-fusion --experts``: Multi-branch, Meta-branch and AWMF-CNN (fixed / alternating)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_train_support import FAST, make_store

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir, load_checkpoint_file
from msn_cli.models.layers import count_parameters
from msn_cli.stages.evaluate import evaluate_store
from msn_cli.stages.train_fusion import train_fusion
from msn_cli.stages.train_meta import train_meta
from msn_cli.training.alternate import phase
from msn_cli.training.config import FusionConfig, MetaConfig

TINY = {"batch_size": 4, "workers": 0, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """A store, three single-resolution baselines (X1, X2, X3) and one at another width."""
    d = tmp_path_factory.mktemp("experts")
    n = torch.get_num_threads()
    store = make_store(d)
    for x in ("x1", "x2", "x3"):
        train_meta(MetaConfig(store, str(d / x), epochs=1, width=0.125, input=x, **TINY))
    train_meta(MetaConfig(store, str(d / "wide"), epochs=1, width=0.25, input="x2", **TINY))
    torch.set_num_threads(n)
    return store, d, ",".join(str(d / x) for x in ("x1", "x2", "x3"))


def fusion(store, ck, experts, **kw):
    n = torch.get_num_threads()
    try:
        return train_fusion(FusionConfig(store, str(ck), experts=experts, **{**TINY, **kw}))
    finally:
        torch.set_num_threads(n)


def expert_state(model, which):
    return model.branch_net(which).state_dict()


def equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fixed_awmf_keeps_the_experts_and_scores_every_output(experts, tmp_path):
    store, d, sources = experts
    ck = tmp_path / "awmf"
    result = fusion(store, ck, sources, method="awmf", epochs=1, val_split="train")
    assert result.epochs_run == 1 and "val_miou_fusion" in result.history[-1]
    card = CheckpointDir(ck).read_card()
    assert card.model["branches"] == "independent" and card.model["gap_layers"] == []
    assert card.model["fusion"] == "awmf" and not card.model["tune_experts"]
    recorded = json.loads((ck / "experts" / "config.json").read_text())["sources"]
    assert [recorded[x]["trained_on"] for x in ("x1", "x2", "x3")] == ["x1", "x2", "x3"]
    model, stages = CheckpointDir(ck).load_model()
    assert stages == ("experts", "fusion")
    for x in ("x1", "x2", "x3"):  # fixed: the experts are the baselines' weights, unchanged
        source = load_checkpoint_file(d / x / "meta" / "weights.pt")
        assert equal_states(expert_state(model, x), source)
    res, _ = evaluate_store(store, str(ck), device="cpu")
    assert res["method"] == "AWMF-CNN (bisenet, fixed)"
    assert all(res["miou"][o] is not None for o in ("x1", "x2", "x3", "fusion"))
    assert res["fusion_params_m"] == pytest.approx(count_parameters(model.fusion) / 1e6)
    assert res["params_m"] == pytest.approx(count_parameters(model) / 1e6)
    for x in ("x1", "x2", "x3"):  # each branch scores like its own baseline directory
        alone, _ = evaluate_store(store, str(d / x), device="cpu")
        assert res["miou"][x] == alone["miou"][x]
    again = fusion(store, ck, sources, method="awmf", epochs=1, val_split="train")
    assert again.note == "already finished"


def test_alternating_awmf_tunes_experts_and_fusion_in_turn(experts, tmp_path):
    store, d, sources = experts
    assert [phase(e) for e in range(4)] == ["fusion", "experts", "fusion", "experts"]
    ck, ref = tmp_path / "e2e", tmp_path / "ref"
    result = fusion(store, ck, sources, method="awmf", alternate=True, epochs=1)
    assert [r["trained"] for r in result.history] == ["fusion"]
    after_one = load_checkpoint_file(ck / "fusion" / "weights.pt")
    src = load_checkpoint_file(d / "x1" / "meta" / "weights.pt")
    tuned = {k[3:]: v for k, v in after_one.items() if k.startswith("x1.")}
    assert equal_states(tuned, src)  # a fusion epoch leaves the experts alone
    result = fusion(store, ck, sources, method="awmf", alternate=True, epochs=2)  # train further
    assert [r["trained"] for r in result.history] == ["fusion", "experts"]
    assert {"loss_x1", "loss_x2", "loss_x3", "loss_fusion"} <= set(result.history[-1])
    final = load_checkpoint_file(ck / "fusion" / "weights.pt")
    fused = {k[7:]: v for k, v in final.items() if k.startswith("fusion.")}
    old = {k[7:]: v for k, v in after_one.items() if k.startswith("fusion.")}
    assert equal_states(fused, old)  # an experts epoch leaves the fusion alone
    tuned = {k[3:]: v for k, v in final.items() if k.startswith("x1.")}
    assert not equal_states(tuned, src)
    model, _ = CheckpointDir(ck).load_model()
    assert CheckpointDir(ck).read_card().model["tune_experts"]
    assert equal_states(expert_state(model, "x1"), tuned)  # fusion/ overrides experts/
    fusion(store, ref, sources, method="awmf", alternate=True, epochs=2)  # uninterrupted
    reference = load_checkpoint_file(ref / "fusion" / "weights.pt")
    assert equal_states(final, reference)  # both optimizers and RNGs resumed exactly
    res, _ = evaluate_store(store, str(ck), device="cpu")
    assert res["method"] == "AWMF-CNN (bisenet)"


def test_meta_branch_row_is_the_meta_branch_on_every_input(experts, tmp_path):
    store, d, _ = experts
    ck = tmp_path / "meta-branch"
    meta = str(d / "x3")
    fusion(store, ck, ",".join([meta] * 3), method="meta", epochs=1)
    res, _ = evaluate_store(store, str(ck), device="cpu")
    alone, _ = evaluate_store(store, meta, device="cpu")
    assert res["method"] == "Meta-branch + Meta-FM (bisenet)" and res["miou"]["fusion"] is not None
    assert alone["method"] == "Meta-branch (bisenet)" and alone["miou"]["fusion"] is None
    for x in ("x1", "x2", "x3"):  # the meta-branch directory alone scores the same branches
        assert res["miou"][x] == alone["miou"][x]
    model, _ = CheckpointDir(ck).load_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the X3-trained weights serve X1 and X2 unchanged
        a = model.branch(x, "x1").logits
        b = CheckpointDir(meta).load_model()[0].meta_branch(x).logits
    assert torch.equal(a, b)
    assert bool(model.fusion.has_stored)  # σ* stored: predicts without labels


def test_bad_experts_are_refused(experts, tmp_path, msn_invoke):
    store, d, sources = experts

    def run(*extra):
        return msn_invoke("train-fusion", "--store", store, "--epochs", "1", *FAST, *extra)

    ck = tmp_path / "ck"
    res = run("--checkpoints", ck, "--experts", f"{d / 'x1'},{d / 'x2'}")
    assert res.exit_code == 2 and "three directories" in res.stderr
    res = run("--checkpoints", ck, "--experts", sources, "--alternate")
    assert res.exit_code == 2 and "--alternate" in res.stderr  # Meta-FM needs fixed branches
    res = run("--checkpoints", d / "x3", "--alternate", "--method", "awmf")
    assert res.exit_code == 2 and "--experts" in res.stderr
    res = run("--checkpoints", ck, "--experts", f"{d / 'x1'},{d / 'wide'},{d / 'x3'}")
    assert res.exit_code == 1 and "expert x2 has width=0.25" in res.stderr
    assert not ck.exists()
    res = run("--checkpoints", ck, "--experts", f"{d / 'x1'},{tmp_path / 'none'},{d / 'x3'}")
    assert res.exit_code == 1 and "model.json" in res.stderr
    assert run("--checkpoints", ck, "--experts", sources, "--method", "conv").exit_code == 0
    other = f"{d / 'x1'},{d / 'x1'},{d / 'x3'}"
    res = run("--checkpoints", ck, "--experts", other, "--method", "conv")
    assert res.exit_code == 1 and "expert x2 came from" in res.stderr
    res = run("--checkpoints", ck, "--method", "conv")
    assert res.exit_code == 1 and "holds independent experts" in res.stderr
    res = msn_invoke("train-memrm", "--store", store, "--checkpoints", ck, *FAST)
    assert res.exit_code == 1 and "holds independent experts" in res.stderr
    res = msn_invoke("train-meta", "--store", store, "--checkpoints", ck, "--width", "0.125", *FAST)
    assert res.exit_code == 1 and "holds independent experts" in res.stderr
    shutil.copytree(d / "x3", tmp_path / "msn")
    res = run("--checkpoints", tmp_path / "msn", "--experts", sources)
    assert res.exit_code == 1 and "holds an MSN" in res.stderr
    with pytest.raises(MsnError, match="holds other experts"):
        fusion(store, ck, other, method="conv", epochs=1)
    fusion(store, tmp_path / "msn", sources, method="conv", epochs=1, restart=True)
    assert CheckpointDir(tmp_path / "msn").completed() == ("experts", "fusion")  # meta dropped
    shutil.copytree(d / "x2", tmp_path / "x2")
    moved = f"{d / 'x1'},{tmp_path / 'x2'},{d / 'x3'}"
    fusion(store, tmp_path / "moved", moved, method="conv", epochs=1)
    # what was imported is each source's selected weights (best.pt): tamper with exactly that
    selected = CheckpointDir(tmp_path / "x2").stage("meta").selected
    assert selected.name == "best.pt"
    shutil.copy(CheckpointDir(d / "x1").stage("meta").selected, selected)
    with pytest.raises(MsnError, match="weights of expert x2 .* changed since they were imported"):
        fusion(store, tmp_path / "moved", moved, method="conv", epochs=1)
    fusion(store, ck, other, method="conv", epochs=1, restart=True)  # --restart re-imports
    model, _ = CheckpointDir(ck).load_model()
    source = load_checkpoint_file(CheckpointDir(d / "x1").stage("meta").selected)
    assert equal_states(expert_state(model, "x2"), source)


def test_alternating_awmf_under_torchrun_two_processes(experts, tmp_path):
    """DDP: the per-epoch wrapper sees every trained parameter (aux heads included)."""
    import subprocess
    import sys

    store, _, sources = experts
    ck = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    cmd += ["-m", "msn_cli.cli", "train-fusion", "--store", store, "--checkpoints", str(ck)]
    cmd += ["--experts", sources, "--method", "awmf", "--alternate", "--epochs", "2", *FAST]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(x) for x in (ck / "fusion" / "history.jsonl").read_text().splitlines()]
    assert [r["trained"] for r in history] == ["fusion", "experts"]
    assert "loss_x1_aux1" in history[1]  # BiSeNet's deep supervision trains with the experts
    CheckpointDir(ck).load_model()

"""``msn train-meta``: outputs, resume after SIGKILL, options, DDP, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_train_support import FAST, cli, kill_in_second_epoch, make_store, same_weights

from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.stages.train_meta import train_meta
from msn_cli.training.config import MetaConfig
from msn_cli.training.data import Augment


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("train-meta"))


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def meta_args(store, ck, *extra):
    return ["train-meta", "--store", store, "--checkpoints", ck, "--width", "0.125", *FAST, *extra]


def test_writes_the_stage_resumes_and_extends(store, tmp_path, msn_invoke, keep_threads):
    ck = tmp_path / "ck"
    res = msn_invoke(*meta_args(store, ck, "--epochs", "2"))
    assert res.exit_code == 0, res.output
    assert "2 epoch(s) trained" in res.stdout and "val mIoU x3" in res.stdout
    card = CheckpointDir(ck).read_card()
    assert card.input == "x3" and card.patch_size == 64 and card.magnifications == (4, 2, 1)
    assert card.model["backbone"] == "bisenet" and card.classes[1] == "benign"
    meta = ck / "meta"
    for name in ("last.pt", "weights.pt", "config.json", "history.jsonl", "curves.png"):
        assert (meta / name).is_file(), name
    history = [json.loads(line) for line in (meta / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "loss_x3", "train_miou_x3", "val_miou_x3", "seconds"} <= set(history[0])
    state = torch.load(meta / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and {"torch", "numpy_keys", "python"} <= set(state["rng"])
    assert {"model", "optimizer", "data_order"} <= set(state)
    model, stages = CheckpointDir(ck).load_model()
    assert stages == ("meta",)
    again = msn_invoke(*meta_args(store, ck, "--epochs", "2"))
    assert again.exit_code == 0 and "already finished" in again.stdout
    more = msn_invoke(*meta_args(store, ck, "--epochs", "3"))
    assert more.exit_code == 0 and "1 epoch(s) trained" in more.stdout
    assert len((meta / "history.jsonl").read_text().splitlines()) == 3
    other = msn_invoke(*meta_args(store, ck, "--epochs", "3", "--lr", "0.01"))
    assert other.exit_code == 1 and "--restart" in other.stderr and "lr" in other.stderr
    restarted = msn_invoke(*meta_args(store, ck, "--epochs", "1", "--restart"))
    assert restarted.exit_code == 0 and "1 epoch(s) trained" in restarted.stdout


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(store, tmp_path, keep_threads):
    killed = tmp_path / "killed"
    args = meta_args(store, killed, "--epochs", "2")
    kill_in_second_epoch(killed / "meta", *args)
    cli(*args)
    ref = tmp_path / "ref"
    train_meta(
        MetaConfig(store, str(ref), epochs=2, batch_size=4, width=0.125, workers=0, threads=1)
    )
    assert same_weights(killed / "meta" / "weights.pt", ref / "meta" / "weights.pt")


def test_baseline_input_and_data_options(store, tmp_path, msn_invoke, keep_threads):
    ck = tmp_path / "x1"
    opts = ("--input", "x1", "--no-augment", "--color-jitter", "0.2", "--val-split", "none")
    res = msn_invoke(*meta_args(store, ck, "--epochs", "1", "--backbone", "unet", *opts))
    assert res.exit_code == 0, res.output
    card = CheckpointDir(ck).read_card()
    assert card.input == "x1" and card.model["backbone"] == "unet"
    record = json.loads((ck / "meta" / "history.jsonl").read_text())
    assert "train_miou_x1" in record and not any(k.startswith("val_") for k in record)
    refused = msn_invoke("train-memrm", "--store", store, "--checkpoints", ck, *FAST)
    assert refused.exit_code == 1 and "single-resolution baseline" in refused.stderr


def test_refusals(store, tmp_path, msn_invoke, keep_threads):
    ck = tmp_path / "ck"
    base = ("--store", store, "--checkpoints", ck, *FAST)
    res = msn_invoke("train-memrm", *base)
    assert res.exit_code == 1 and "no model.json" in res.stderr and "train-meta" in res.stderr
    assert msn_invoke(*meta_args(store, ck, "--epochs", "1")).exit_code == 0
    res = msn_invoke("train-fusion", *base)
    assert res.exit_code == 1 and "stage 'memrm' has not finished" in res.stderr
    res = msn_invoke(*meta_args(store, ck, "--epochs", "1", "--backbone", "unet"))
    assert res.exit_code == 1 and "backbone='bisenet'" in res.stderr and "--restart" in res.stderr
    other = make_store(tmp_path / "other", classes=("a", "b", "c", "d"))
    res = msn_invoke("train-memrm", "--store", other, "--checkpoints", ck, *FAST)
    assert res.exit_code == 1 and "do not match" in res.stderr and "classes" in res.stderr
    for bad in (
        ("--input", "x4"),
        ("--split", "nope"),
        ("--backbone", "vgg"),
        ("--device", "tpu"),
    ):
        res = msn_invoke(*meta_args(store, tmp_path / "bad", *bad))
        assert res.exit_code == 2, (bad, res.output)
        assert len(res.stderr.strip().splitlines()) == 1
    res = msn_invoke("train-memrm", *base, "--gap-layers", "nope")
    assert res.exit_code == 2 and "--gap-layers" in res.stderr
    res = msn_invoke("train-fusion", *base, "--method", "nope")
    assert res.exit_code == 2 and "--method" in res.stderr


def test_torchrun_two_processes_on_cpu(store, tmp_path):
    ck = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--standalone", "-m", "msn_cli.cli"]
    proc = subprocess.run(
        [*cmd, *meta_args(store, ck, "--epochs", "1")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(x) for x in (ck / "meta" / "history.jsonl").read_text().splitlines()]
    assert record["patches_per_s"] > 0 and record["val_miou_x3"] >= 0
    assert proc.stdout.count("1 epoch(s) trained") == 1  # rank 0 reports, rank 1 is silent
    CheckpointDir(ck).load_model()


def test_augmentation_is_one_dihedral_op_per_sample_and_epoch():
    grid = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    sample = {
        "index": torch.tensor(5),
        "x1": grid.expand(3, 4, 4).clone(),
        "y1": grid.clone(),
        "mem": grid.float().expand(2, 4, 4).clone(),
    }
    aug = Augment(seed=1)
    outs = [aug(dict(sample), epoch=e) for e in range(8)]
    for out in outs:
        assert torch.equal(out["x1"][0], out["y1"]) and torch.equal(out["mem"][1].byte(), out["y1"])
    assert len({tuple(o["y1"].flatten().tolist()) for o in outs}) > 1  # varies with the epoch
    assert torch.equal(aug(dict(sample), epoch=3)["y1"], outs[3]["y1"])  # and only with it
    jitter = Augment(seed=1, jitter=0.3)(dict(sample), epoch=0)
    assert jitter["x1"].dtype == torch.uint8 and torch.equal(jitter["y1"], outs[0]["y1"])

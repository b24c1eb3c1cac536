"""A later stage built on weights that have changed since is stale: refused until retrained."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from faults import file_sums
from slides import pattern, write_pyramid
from test_train_support import FAST, make_store

from msn_cli.io.checkpoints import CheckpointDir, weights_sha256
from msn_cli.stages.train_fusion import train_fusion
from msn_cli.stages.train_memrm import train_memrm
from msn_cli.stages.train_meta import train_meta
from msn_cli.training.config import FusionConfig, MemRMConfig, MetaConfig

TINY = {"batch_size": 4, "workers": 0, "threads": 1}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A store and a finished meta -> memrm -> fusion directory (one epoch each)."""
    d = tmp_path_factory.mktemp("stale")
    n = torch.get_num_threads()
    store = make_store(d)
    ck = str(d / "ck")
    train_meta(MetaConfig(store, ck, epochs=1, width=0.125, **TINY))
    train_memrm(MemRMConfig(store, ck, epochs=1, holdout=0.5, **TINY))
    train_fusion(FusionConfig(store, ck, epochs=1, **TINY))
    torch.set_num_threads(n)
    return store, d


def one_line(result, *words):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in result.output, err
    for w in words:
        assert w in err[0], err


def test_each_stage_records_the_weights_it_was_built_on(pipeline):
    ck = CheckpointDir(pipeline[1] / "ck")
    meta, memrm = (weights_sha256(ck.stage(s).best) for s in ("meta", "memrm"))  # selected
    assert ck.stage("meta").read_config()["base"] == {}
    assert ck.stage("memrm").read_config()["base"] == {"meta": meta}
    assert ck.stage("fusion").read_config()["base"] == {"meta": meta, "memrm": memrm}


def test_training_an_earlier_stage_further_makes_the_later_ones_stale(
    pipeline, tmp_path, msn_invoke
):
    store, d = pipeline
    ck = tmp_path / "ck"
    shutil.copytree(d / "ck", ck)
    slide = tmp_path / "s.tif"
    write_pyramid(slide, pattern(200, 150), (1, 4))
    train = ["--store", store, "--checkpoints", ck, *FAST]
    result = msn_invoke("train-meta", *train, "--epochs", "2", "--width", "0.125")
    assert result.exit_code == 0, result.output  # meta trains further: its weights change
    # ... and epoch 2 validates better, so meta's best.pt (what memrm was built on) changes
    assert CheckpointDir(ck).stage("meta").read_best()["epoch"] == 2
    before = file_sums(ck)

    # Training the stale stage again with the same options: says so, names --restart.
    for cmd in ("train-memrm", "train-fusion"):
        result = msn_invoke(cmd, *train, "--epochs", "1")
        stage = cmd.split("-")[1]
        one_line(result, f"stage '{stage}' is stale", "'meta'", f"msn {cmd} --restart")
    # predict and evaluate refuse the mismatched combination, writing nothing.
    out = tmp_path / "mask.tif"
    pred = ["predict", slide, "--checkpoints", ck, "--out", out, "--min-tissue", "0"]
    one_line(msn_invoke(*pred), "stage 'memrm' is stale", "--restart")
    assert not out.exists()
    js = tmp_path / "r.json"
    result = msn_invoke("evaluate", "--store", store, "--checkpoints", ck, "--json", js)
    one_line(result, "is stale")
    assert not js.exists() and file_sums(ck) == before

    # --restart retrains memrm (and drops fusion, built on it); then everything works again.
    assert msn_invoke("train-memrm", *train, "--epochs", "1", "--restart").exit_code == 0
    assert not CheckpointDir(ck).stage("fusion").complete
    assert msn_invoke("train-fusion", *train, "--epochs", "1").exit_code == 0
    result = msn_invoke(*pred)
    assert result.exit_code == 0, result.output
    recorded = json.loads((ck / "fusion" / "config.json").read_text())["base"]
    assert recorded["meta"] == weights_sha256(ck / "meta" / "best.pt")

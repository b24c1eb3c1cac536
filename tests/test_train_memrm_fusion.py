"""``msn train-memrm`` and ``train-fusion``: gap layers, caches, hold-out, methods, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_train_support import FAST, cli, kill_in_second_epoch, make_store, same_weights

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.dataset import PatchDataset
from msn_cli.models.base import OutputGradient
from msn_cli.models.fusion import sigma_from_gradients
from msn_cli.models.layers import Grid, upsample
from msn_cli.models.memory import crop_center
from msn_cli.runtime import to_input
from msn_cli.stages.train_fusion import train_fusion
from msn_cli.stages.train_memrm import Oriented, mirrored_axes, train_memrm
from msn_cli.stages.train_meta import train_meta
from msn_cli.training.config import FusionConfig, MemRMConfig, MetaConfig
from msn_cli.training.data import Augment

TINY = {"batch_size": 4, "workers": 0, "threads": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store, a finished meta stage, and a finished memrm stage (hold-out 0.5) beside it."""
    d = tmp_path_factory.mktemp("train-mf")
    n = torch.get_num_threads()
    store = make_store(d)
    train_meta(MetaConfig(store, str(d / "meta"), epochs=1, width=0.125, **TINY))
    shutil.copytree(d / "meta", d / "memrm")
    train_memrm(MemRMConfig(store, str(d / "memrm"), epochs=1, holdout=0.5, **TINY))
    torch.set_num_threads(n)
    return store, d


def copy(trained, which, tmp_path):
    shutil.copytree(trained[1] / which, tmp_path / "ck")
    return tmp_path / "ck"


def stage_args(cmd, store, ck, *extra):
    return [cmd, "--store", store, "--checkpoints", ck, *FAST, *extra]


def test_memrm_gap_analysis_cache_and_holdout(trained, tmp_path, msn_invoke):
    store, ck = trained[0], copy(trained, "meta", tmp_path)
    extra = ("--epochs", "1", "--gap-layers", "auto", "--top-k", "2", "--holdout", "0.5")
    extra += ("--val-split", "train")
    res = msn_invoke(*stage_args("train-memrm", store, ck, *extra))
    assert res.exit_code == 0, res.output
    gaps = json.loads((ck / "memrm" / "gap_layers.json").read_text())
    assert len(gaps["layers"]) == 9 and gaps["patches"] == 8
    for stats in gaps["layers"].values():
        assert {"x1", "x2", "x3", "score"} <= set(stats) and stats["x1"]["variance"] >= 0
    card = CheckpointDir(ck).read_card()
    assert card.model["gap_layers"] == gaps["chosen"] and len(gaps["chosen"]) == 2
    assert (ck / "memrm" / "gap_layers.png").is_file() and (ck / "memrm" / "curves.png").is_file()
    config = json.loads((ck / "memrm" / "config.json").read_text())
    assert sum(map(len, config["held_out"].values())) == 8 and config["fit_patches"] == 8
    manifest = json.loads((ck / "memrm" / "cache" / "manifest.json").read_text())
    assert manifest["rows"] == 8 and len(manifest["arrays"]) == 2
    record = json.loads((ck / "memrm" / "history.jsonl").read_text())
    assert {"loss_x1", "loss_x2", "train_miou_x1", "val_miou_x1", "val_miou_x2"} <= set(record)
    model, stages = CheckpointDir(ck).load_model()
    assert stages == ("meta", "memrm") and set(model.memory_recall["x1"]) == set(gaps["chosen"])


def test_memrm_nongap_takes_the_lowest_scoring_layers(trained, tmp_path, msn_invoke):
    store, ck = trained[0], copy(trained, "meta", tmp_path)
    extra = ("--epochs", "1", "--gap-layers", "nongap", "--top-k", "2")
    assert msn_invoke(*stage_args("train-memrm", store, ck, *extra)).exit_code == 0
    gaps = json.loads((ck / "memrm" / "gap_layers.json").read_text())
    order = sorted(gaps["layers"], key=lambda n: gaps["layers"][n]["score"])
    chosen = CheckpointDir(ck).read_card().model["gap_layers"]
    assert set(chosen) == set(order[:2]) and gaps["chosen"] == chosen and gaps["lowest"]
    assert chosen == [n for n in gaps["layers"] if n in chosen]  # network order


def test_memrm_named_layers_without_cache(trained, tmp_path, msn_invoke):
    store, ck = trained[0], copy(trained, "meta", tmp_path)
    extra = ("--epochs", "1", "--gap-layers", "layer3,layer4", "--cache-gb", "0")
    extra += ("--crop", "centre")
    assert msn_invoke(*stage_args("train-memrm", store, ck, *extra)).exit_code == 0
    card = CheckpointDir(ck).read_card()
    assert card.model["gap_layers"] == ["layer3", "layer4"] and card.model["crop"] == "centre"
    assert not (ck / "memrm" / "cache" / "manifest.json").exists()
    model, _ = CheckpointDir(ck).load_model()
    assert {rm.phase for rm in model.memory_recall["x1"].values()} == {0.5}
    res = msn_invoke(*stage_args("train-memrm", store, ck, "--crop", "middle"))
    assert res.exit_code == 2 and "--crop" in res.stderr


def test_memrm_crops_on_the_receptive_field_grid_by_default(trained):
    """The fixture's train-memrm (cached, augmented) records its crop; the model uses it."""
    ck = CheckpointDir(trained[1] / "memrm")
    assert ck.read_card().model["crop"] == "receptive-field"
    assert json.loads(ck.stage("memrm").config.read_text())["crop"] == "receptive-field"
    model, _ = ck.load_model()
    assert model.memory_recall["x1"]["layer3"].phase == 1 / 32  # BiSeNet layer3: Grid(0, 16)


def test_turned_cached_memory_is_cropped_where_it_sits():
    """train-memrm turns cached X3 meta-features with the images; for each of the eight
    turns, the crop (told where the maps were mirrored) samples A at the level-0 point each
    pixel of the live B (computed from the turned X1 on its own grid) sits on."""
    grid, p, n = Grid(0.0, 16.0), 256, 16  # BiSeNet layer3 on patch 256
    r = torch.arange(p, dtype=torch.float64) + 0.5 - p / 2  # continuous, from the centre

    def dense(downsample):  # (2, P, P): level-0 x, y of every pixel of a branch image
        return torch.stack(torch.meshgrid(1000 + r * downsample, 3000 + r * downsample,
                                          indexing="xy"))  # fmt: skip

    pick = slice(int(grid.offset), None, int(grid.stride))  # the feature grid's pixels
    aug = Oriented(Augment(seed=0))
    turns = {}
    for index in range(64):
        turns.setdefault(aug.augment.params(index)[:2], index)
    assert len(turns) == 8
    for (k, flip), index in sorted(turns.items()):
        for ratio, downsample in ((16, 1.0), (4, 4.0)):
            sample = {"index": torch.tensor(index), "x": dense(downsample)}
            sample["mem"] = dense(16.0)[:, pick, pick]  # A, cached from the unturned X3
            out = aug(sample, 0)
            truth = out["x"][:, pick, pick]  # B's pixels of the turned image, level 0
            mirrored = mirrored_axes(out["orient"][None])
            got = crop_center(out["mem"][None], ratio, (n, n), grid.phase, mirrored)[0]
            torch.testing.assert_close(got, truth, rtol=0, atol=1e-9, msg=f"k={k} flip={flip}")
            if bool(mirrored.any()):  # not told: off by whole pixels
                naive = crop_center(out["mem"][None], ratio, (n, n), grid.phase)[0]
                assert (naive - truth).abs().max() > 10


def test_memrm_sigkill_then_rerun_equals_uninterrupted(trained, tmp_path):
    store = trained[0]
    killed, ref = copy(trained, "meta", tmp_path), tmp_path / "ref"
    shutil.copytree(killed, ref)
    args = stage_args("train-memrm", store, killed, "--epochs", "2")
    kill_in_second_epoch(killed / "memrm", *args)
    cli(*args)
    cli(*stage_args("train-memrm", store, ref, "--epochs", "2"))
    assert same_weights(killed / "memrm" / "weights.pt", ref / "memrm" / "weights.pt")


def test_fusion_cache_is_the_model_and_sigma_is_stored(trained, tmp_path):
    store, ck = trained[0], copy(trained, "memrm", tmp_path)
    n = torch.get_num_threads()
    train_fusion(FusionConfig(store, str(ck), epochs=1, val_split="train", **TINY))
    torch.set_num_threads(n)
    config = json.loads((ck / "fusion" / "config.json").read_text())
    assert config["holdout"] is True and config["fit_patches"] == 8  # memrm's held-out patches
    assert config["fusion_init"] == "average"
    model, stages = CheckpointDir(ck).load_model()
    assert stages == ("meta", "memrm", "fusion") and bool(model.fusion.has_stored)
    held = json.loads((ck / "memrm" / "config.json").read_text())["held_out"]
    ds = PatchDataset(store, split="sub-train")
    (slide, patches), cache = next(iter(held.items())), ck / "fusion" / "cache"
    rows = [0, 1]
    i = [k for k in range(len(ds)) if ds.locate(k) == (slide, patches[0])][0]
    j = [k for k in range(len(ds)) if ds.locate(k) == (slide, patches[1])][0]
    batch = torch.utils.data.default_collate(ds.__getitems__([i, j]))
    x = [to_input(batch[k], torch.device("cpu")) for k in ("x1", "x2", "x3")]
    with torch.no_grad():
        meta = model.meta_features(x[2])
        s1 = model.branch(x[0], "x1", meta.features).logits
        s1_cached = upsample(torch.from_numpy(np.load(cache / "s1.npy")[rows]).float(), (64, 64))
        assert torch.allclose(s1, s1_cached, atol=0.05)
        y1 = batch["y1"]
        sigma = sigma_from_gradients(*model.support_gradients(*x, y1))
    g1, g2, c1, c2 = (
        torch.from_numpy(np.load(cache / f"{k}.npy")[rows]) for k in ("g1", "g2", "c1", "c2")
    )
    cached = sigma_from_gradients(OutputGradient(g1, c1), OutputGradient(g2, c2))
    assert torch.allclose(sigma, cached, atol=1e-5)
    fused = model(*x).s
    assert fused.shape == (2, 4, 64, 64) and torch.isfinite(fused).all()


def test_fusion_pseudo_sigma_trains_on_each_patchs_own_label_free_sigma(trained, tmp_path):
    """``--sigma pseudo``: every query patch's σ is cached from argmax S1 (no label), the same
    σ the model computes at predict time; no σ* is stored; model.json records it."""
    store, ck = trained[0], copy(trained, "memrm", tmp_path)
    n = torch.get_num_threads()
    train_fusion(FusionConfig(store, str(ck), epochs=1, sigma="pseudo", val_split="train", **TINY))
    torch.set_num_threads(n)
    model, _ = CheckpointDir(ck).load_model()
    assert model.config.sigma == "pseudo" and model.pseudo and not bool(model.fusion.has_stored)
    assert json.loads((ck / "fusion" / "config.json").read_text())["sigma"] == "pseudo"
    held = json.loads((ck / "memrm" / "config.json").read_text())["held_out"]
    ds = PatchDataset(store, split="sub-train")
    slide, patches = next(iter(held.items()))
    idx = [[k for k in range(len(ds)) if ds.locate(k) == (slide, p)][0] for p in patches[:2]]
    batch = torch.utils.data.default_collate(ds.__getitems__(idx))  # fit rows 0 and 1
    x = [to_input(batch[k], torch.device("cpu")) for k in ("x1", "x2", "x3")]
    with torch.no_grad():
        meta = model.meta_features(x[2])
        out1, out2 = (model.branch(t, b, meta.features) for t, b in zip(x, ("x1", "x2")))  # noqa: B905
        sigma = model.pseudo_sigma(out1, out2)
    cache = ck / "fusion" / "cache"
    p1, p2, q1, q2 = (
        torch.from_numpy(np.load(cache / f"{k}.npy")[[0, 1]]) for k in ["p1", "p2", "q1", "q2"]
    )
    cached = sigma_from_gradients(OutputGradient(p1, q1), OutputGradient(p2, q2), per_sample=True)
    assert torch.allclose(sigma, cached, atol=1e-5) and (q1 == 64 * 64).all()
    record = json.loads((ck / "fusion" / "history.jsonl").read_text().splitlines()[-1])
    assert record["val_miou_fusion"] is not None


def test_fusion_sigma_option_is_checked(trained, tmp_path, msn_invoke):
    store, ck = trained[0], copy(trained, "memrm", tmp_path)
    for extra, what in (
        (("--sigma", "adaptive"), "--sigma"),
        (("--method", "conv", "--sigma", "pseudo"), "is Meta-FM's"),
    ):
        res = msn_invoke(*stage_args("train-fusion", store, ck, "--epochs", "1", *extra))
        assert (
            res.exit_code == 2 and what in res.stderr and len(res.stderr.strip().splitlines()) == 1
        )


@pytest.mark.parametrize(("method", "init"), [("conv", "he"), ("awmf", "average")])
def test_comparison_fusions(trained, tmp_path, msn_invoke, method, init):
    store, ck = trained[0], copy(trained, "memrm", tmp_path)
    extra = ("--epochs", "1", "--method", method, "--no-holdout", "--no-augment")
    res = msn_invoke(*stage_args("train-fusion", store, ck, *extra, "--fusion-init", init))
    assert res.exit_code == 0, res.output
    config = json.loads((ck / "fusion" / "config.json").read_text())
    assert config["fit_patches"] == 16 and config["fusion_init"] == init
    model, _ = CheckpointDir(ck).load_model()
    assert model.config.fusion == method


def test_experts_fit_on_the_patches_an_msn_held_out(trained, tmp_path):
    """Table 3's expert rows fit their fusion on MSN's fusion patches (--holdout-from)."""
    store, d = trained
    meta = str(d / "meta")
    held = json.loads((d / "memrm" / "memrm" / "config.json").read_text())["held_out"]
    n = torch.get_num_threads()
    cfg = FusionConfig(
        store, str(tmp_path / "mb"), epochs=1, experts=f"{meta},{meta},{meta}",
        holdout_from=str(d / "memrm"), **TINY,
    )  # fmt: skip
    train_fusion(cfg)
    torch.set_num_threads(n)
    config = json.loads((tmp_path / "mb" / "fusion" / "config.json").read_text())
    assert config["holdout"] is True and config["holdout_from"] == str(d / "memrm")
    assert config["fit_patches"] == sum(map(len, held.values())) == 8
    with pytest.raises(MsnError, match="has not finished"):
        train_fusion(FusionConfig(store, str(tmp_path / "x"), experts=cfg.experts,
                                  holdout_from=meta, **TINY))  # fmt: skip
    with pytest.raises(MsnUsageError, match="is for --experts"):
        FusionConfig(store, "ck", holdout_from=meta).validate()
    with pytest.raises(MsnUsageError, match="--fusion-init"):
        FusionConfig(store, "ck", fusion_init="zero").validate()


def test_fusion_holdout_refused_without_memrm_holdout(trained, tmp_path, msn_invoke):
    store, ck = trained[0], copy(trained, "meta", tmp_path)
    args = stage_args("train-memrm", store, ck, "--epochs", "1", "--holdout", "0")
    assert msn_invoke(*args).exit_code == 0
    # without --gap-layers: the backbone's default (deep) gap layer, analysis still saved
    assert CheckpointDir(ck).read_card().model["gap_layers"] == ["layer3"]
    assert (ck / "memrm" / "gap_layers.json").is_file()
    res = msn_invoke(*stage_args("train-fusion", store, ck, "--holdout"))
    assert res.exit_code == 1 and "held no patches out" in res.stderr


def test_fusion_sigkill_then_rerun_equals_uninterrupted(trained, tmp_path):
    store = trained[0]
    killed, ref = copy(trained, "memrm", tmp_path), tmp_path / "ref"
    shutil.copytree(killed, ref)
    args = stage_args("train-fusion", store, killed, "--epochs", "3")
    kill_in_second_epoch(killed / "fusion", *args)
    cli(*args)
    cli(*stage_args("train-fusion", store, ref, "--epochs", "3"))
    assert same_weights(killed / "fusion" / "weights.pt", ref / "fusion" / "weights.pt")

"""msn predict: the mask file, store equivalence, GeoJSON, probabilities, resume, memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from fakes import random_checkpoints
from slides import pattern, write_pyramid

from msn_cli.io.annotations import LabelledPolygon, PolygonLabels, read_geojson, write_geojson
from msn_cli.io.maskreader import read_description
from msn_cli.io.patches import Levels
from msn_cli.io.store import PatchStore
from msn_cli.prediction.config import PredictConfig, PredictJob
from msn_cli.prediction.partial import partial_dir
from msn_cli.prediction.predictor import Predictor
from msn_cli.stages import predict as stage
from msn_cli.stages.predict import predict
from msn_cli.stages.tile import SlideJob, TileConfig, tile

CLASSES = ("normal", "benign", "in situ", "invasive")
P = 32
W, H = 520, 392  # not multiples of P: the last row and column are shifted patches


def make_checkpoints(d: Path, stages=("meta", "memrm", "fusion"), seed: int = 0) -> Path:
    """Random-init weights for ``stages`` (the fusion with a random stored σ*)."""
    random_checkpoints(d, stages, seed, CLASSES, patch_size=P)
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    write_pyramid(d / "s.tif", pattern(W, H, seed=3), downsamples=(1, 4, 16), mpp=0.5)
    sq = np.array([[40, 40], [300, 40], [300, 300], [40, 300]], float)
    write_geojson(d / "s.geojson", [LabelledPolygon(1, "benign", sq)])
    ck = make_checkpoints(d / "ck")
    job = PredictJob(d / "s.tif", d / "m.tif", d / "p.zarr", d / "m.geojson", d / "o.png")
    cfg = PredictConfig(ck, min_tissue=0.0, batch_size=8, workers=2)
    [res] = predict([job], cfg)
    return d, ck, job, cfg, res


def config(ck, **kw) -> PredictConfig:
    return PredictConfig(ck, **{"min_tissue": 0.0, "batch_size": 8, "workers": 2, **kw})


def test_mask_opens_in_openslide_and_tifffile_with_size_mpp_and_levels(env):
    d, _, job, _, res = env
    assert res.status == "predicted" and res.n_predicted == res.n_grid == 17 * 13
    osr = openslide.OpenSlide(str(job.out))
    assert openslide.OpenSlide.detect_format(str(job.out)) == "generic-tiff"
    assert osr.dimensions == (W, H)
    assert osr.level_dimensions == ((W, H), (130, 98))  # until one tile (256) holds it
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    with tifffile.TiffFile(job.out) as tif:
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [(H, W), (98, 130)]
        page = tif.pages[0]
        assert page.is_tiled and page.dtype == np.uint8 and page.compression == 8
        mask = series.levels[0].asarray()
        level1 = series.levels[1].asarray()
    rgba = np.asarray(osr.read_region((0, 0), 0, (W, H)))
    assert np.array_equal(rgba[..., 0], mask)
    assert np.array_equal(level1, mask[2::4, 2::4])  # sampled at each block's centre
    assert set(np.unique(mask)) <= set(range(4)) and len(np.unique(mask)) > 1
    desc = read_description(job.out)
    assert desc["classes"] == list(CLASSES) and desc["branch"] == "fusion"
    assert not partial_dir(job.out).exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def owners(corners: np.ndarray, width: int, height: int) -> np.ndarray:
    """Index of the patch owning each level-0 pixel: the later patch wins."""
    out = np.full((height, width), -1, np.int64)
    for i, (x, y) in enumerate(corners.astype(int)):
        out[y : y + P, x : x + P] = i
    return out


def test_mask_equals_model_predictions_on_the_store_patch_for_patch(env):
    d, ck, job, cfg, _ = env
    tcfg = TileConfig(Levels.parse("16x 4x 1x"), CLASSES, P, min_tissue=0.0, codec="zstd:1")
    tile(str(d / "st.zarr"), [SlideJob(d / "s.tif")], tcfg)
    rec = PatchStore.open(str(d / "st.zarr")).slide("s")
    xs = [rec.read(b, slice(None)) for b in ("x1", "x2", "x3")]
    corners = rec.read("centers", slice(None)) - P / 2
    order = np.lexsort((corners[:, 0], corners[:, 1]))  # raster order: later wins
    corners, xs = corners[order], [x[order] for x in xs]
    predictor = Predictor(cfg)
    labels = np.concatenate(
        [predictor([x[i : i + 16] for x in xs], False)[0] for i in range(0, len(corners), 16)]
    )
    mask = tifffile.imread(job.out)
    own = owners(corners, W, H)
    assert (own >= 0).all()
    for i, (x, y) in enumerate(corners.astype(int)):
        mine = own[y : y + P, x : x + P] == i  # the last row/column may overhang the image
        h, w = mine.shape
        assert mine.any()
        np.testing.assert_array_equal(mask[y : y + h, x : x + w][mine], labels[i][:h, :w][mine])


def test_geojson_rasterises_back_to_the_mask_and_carries_classes(env):
    _, _, job, _, _ = env
    mask = tifffile.imread(job.out)
    polys = read_geojson(job.geojson, CLASSES)
    assert {p.name for p in polys} == {CLASSES[k] for k in np.unique(mask) if k}
    back = PolygonLabels(polys, (W, H), background=0).region(0.0, 0.0, 1.0, H, W)
    np.testing.assert_array_equal(back, mask)
    data = json.loads(job.geojson.read_text())
    assert data["type"] == "FeatureCollection"
    cls = data["features"][0]["properties"]["classification"]
    assert cls["name"] in CLASSES and len(cls["color"]) == 3
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in data["features"])  # holes


def test_geojson_traced_on_a_reduced_level_agrees_up_to_its_resolution(env, tmp_path):
    d, ck, _, _, _ = env
    job = PredictJob(d / "s.tif", tmp_path / "m.tif", geojson=tmp_path / "m.geojson")
    predict([job], config(ck, trace_max_side=200))  # level 1 (130 x 98), downsample 4
    mask = tifffile.imread(job.out)
    back = PolygonLabels(read_geojson(job.geojson, CLASSES), (W, H), 0).region(0, 0, 4, 98, 130)
    np.testing.assert_array_equal(back, mask[2::4, 2::4])


def test_probabilities_and_overlay(env):
    _, _, job, _, _ = env
    arr = zarr.open_array(str(job.probabilities), mode="r")
    assert arr.shape == (4, 25, 33) and arr.dtype == np.float16
    assert arr.attrs["classes"] == list(CLASSES) and arr.attrs["downsample"] == 16
    probs = arr[:]
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    mask = tifffile.imread(job.out)
    at = mask[np.minimum(np.arange(25) * 16 + 8, H - 1)][
        :, np.minimum(np.arange(33) * 16 + 8, W - 1)
    ]
    chosen = np.take_along_axis(probs, at[None].astype(np.int64), 0)[0]
    assert (chosen >= probs.max(0)).all()
    from PIL import Image

    with Image.open(job.overlay) as img:
        assert img.width == W and img.height > H  # legend below


def test_killed_run_resumes_from_finished_bands_and_equals_an_uninterrupted_run(
    env, tmp_path, monkeypatch
):
    d, ck, ref, _, _ = env
    job = PredictJob(d / "s.tif", tmp_path / "m.tif", tmp_path / "p.zarr")
    real_save, saved = stage.BandStore.save, []

    def dying_save(self, r, labels, probs):
        if len(saved) == 5:
            raise KeyboardInterrupt
        real_save(self, r, labels, probs)
        saved.append(r)

    monkeypatch.setattr(stage.BandStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        predict([job], config(ck))
    assert not job.out.exists() and not job.probabilities.exists()
    assert len(list(partial_dir(job.out).glob("*.labels.zst"))) == 5
    monkeypatch.setattr(stage.BandStore, "save", real_save)
    [res] = predict([job], config(ck))
    assert res.status == "resumed" and res.bands_reused == 5
    assert res.n_predicted == res.n_grid - 5 * 17
    np.testing.assert_array_equal(tifffile.imread(job.out), tifffile.imread(ref.out))
    np.testing.assert_array_equal(zarr.open_array(str(job.probabilities))[:], zarr.open_array(
        str(ref.probabilities))[:])  # fmt: skip
    assert not partial_dir(job.out).exists()
    [again] = predict([job], config(ck))  # finished: nothing to do
    assert again.status == "skipped"
    [other] = predict([job], config(ck, branch="x1"))  # another output: redone
    assert other.status == "predicted"


def test_background_patches_are_class_0_without_a_model_call(env, tmp_path):
    d, ck, _, _, _ = env
    img = np.full((256, 384, 3), 245, np.uint8)  # glass, with tissue in one corner
    img[:64, :64] = pattern(64, 64, seed=1)
    img[:64, :64, 2] = 120
    write_pyramid(tmp_path / "g.tif", img, downsamples=(1, 4))
    job = PredictJob(tmp_path / "g.tif", tmp_path / "g_mask.tif")
    [res] = predict([job], config(ck, min_tissue=0.01))
    assert 0 < res.n_predicted <= 9 and res.n_grid == 8 * 12
    assert (tifffile.imread(job.out)[:, 160:] == 0).all()


def test_plain_image_and_x2_branch(env, tmp_path):
    from PIL import Image

    d, ck, _, _, _ = env
    Image.fromarray(pattern(300, 200, seed=5)).save(tmp_path / "isic.png")
    job = PredictJob(tmp_path / "isic.png", tmp_path / "isic.tif", overlay=tmp_path / "o.png")
    [res] = predict([job], config(ck, branch="x2"))
    assert res.status == "predicted"
    osr = openslide.OpenSlide(str(job.out))
    assert osr.dimensions == (300, 200) and "openslide.mpp-x" not in osr.properties


def _peak(path: Path, ck: Path, out: Path) -> int:
    job = PredictJob(path, out)
    tracemalloc.start()
    predict([job], config(ck, workers=1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_stays_bounded_as_the_slide_grows(env, tmp_path, monkeypatch):
    _, ck, _, _, _ = env
    # the slide fingerprint reads files under 16 MiB whole (bounded, but it would dominate here)
    monkeypatch.setattr(stage, "fingerprint", lambda path: str(path))
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    write_pyramid(small, pattern(384, 128, seed=1), downsamples=(1, 4))
    write_pyramid(large, pattern(384, 512, seed=1), downsamples=(1, 4))  # 4x the area
    _peak(small, ck, tmp_path / "warm.tif")
    a = _peak(small, ck, tmp_path / "a.tif")
    b = _peak(large, ck, tmp_path / "b.tif")
    assert b < 1.3 * a, (a, b)


def _predicts_its_fusion(d, ck, tmp_path, n: int, seed: int):
    """``ck`` predicts the slide ``d/s.tif`` as its fusion; then ``n`` random triplets through
    the Predictor: the uint8 inputs, the same as model inputs, and the labels it predicts."""
    import torch

    from msn_cli.runtime import to_input

    job = PredictJob(d / "s.tif", tmp_path / "m.tif")
    [res] = predict([job], config(ck.path))
    assert res.status == "predicted" and read_description(job.out)["branch"] == "fusion"
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 256, (n, P, P, 3), dtype=np.uint8) for _ in range(3)]
    labels, _ = Predictor(config(ck.path))(xs, False)
    ts = [to_input(torch.from_numpy(x).permute(0, 3, 1, 2), torch.device("cpu")) for x in xs]
    return xs, ts, labels


def test_independent_experts_predict_their_fusion_without_labels(env, tmp_path):
    """An AWMF-CNN directory (independent, tuned experts) predicts like its own forward."""
    import torch

    d = env[0]
    ck, model = random_checkpoints(
        tmp_path / "ck", None, 1, CLASSES, patch_size=P, branches="independent",
        fusion="awmf", tune_experts=True,
    )  # fmt: skip
    xs, ts, labels = _predicts_its_fusion(d, ck, tmp_path, n=3, seed=0)
    with torch.no_grad():
        expected = model.eval()(*ts).s.argmax(1).numpy()
    assert np.array_equal(labels, expected)
    x2, _ = Predictor(config(ck.path, branch="x2"))(xs, False)
    assert x2.shape == labels.shape


def test_pseudo_sigma_meta_fm_predicts_per_patch_without_labels(env, tmp_path):
    """σ ``pseudo``: predict computes each patch's σ from its own argmax S1 (under the
    predictor's inference mode, with no label anywhere) and fuses exactly like the model's
    forward; the mask differs from one fused with a single σ for every patch."""
    import torch

    d = env[0]
    ck, model = random_checkpoints(tmp_path / "ck", None, 2, CLASSES, patch_size=P, sigma="pseudo")
    assert ck.read_card().model["sigma"] == "pseudo"
    _, ts, labels = _predicts_its_fusion(d, ck, tmp_path, n=4, seed=1)
    model.eval()
    with torch.no_grad():
        out = model(*ts)
        mem = model.meta_features(ts[2])
        o1, o2 = (model.branch(t, b, mem.features) for t, b in zip(ts, ("x1", "x2")))  # noqa: B905
        one = model.pseudo_sigma(o1, o2).mean(0)  # one σ for all patches instead
        shared = model.fuse(o1.logits, o2.logits, mem.logits, sigma=one.expand(4, -1))
    assert np.array_equal(labels, out.s.argmax(1).numpy())
    assert not torch.allclose(shared, out.s, atol=1e-4)

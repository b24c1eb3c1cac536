"""The store's PyTorch Dataset: aligned samples, chunk reads, worker pickling, complete only."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from slides import pattern, write_pyramid
from torch.utils.data import DataLoader

from msn_cli.errors import MsnError
from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.dataset import PatchDataset
from msn_cli.io.patches import Levels
from msn_cli.io.store import PatchStore
from msn_cli.stages.tile import SlideJob, TileConfig, tile

SQ = np.array([[50, 40], [500, 40], [500, 300], [50, 300]], float)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    jobs = []
    for i, split in enumerate(["train", "train", "test"]):
        write_pyramid(d / f"d{i}.tif", pattern(512 + 64 * i, 384, seed=i))
        write_geojson(d / f"d{i}.geojson", [LabelledPolygon(1 + i % 3, "c", SQ)])
        jobs.append(SlideJob(d / f"d{i}.tif", split=split))
    cfg = TileConfig(Levels.parse("4x 2x 1x"), ("a", "b", "c", "d"), patch_size=32, min_tissue=0)
    tile(str(d / "st.zarr"), jobs, cfg)
    return str(d / "st.zarr")


def test_samples_match_the_store_arrays(store):
    ds = PatchDataset(store, split="train")
    st = PatchStore.open(store)
    assert len(ds) == sum(r.n_patches for r in st.slides("train")) == 16 * 12 + 18 * 12
    for i in (0, 5, len(ds) - 1):
        name, j = ds.locate(i)
        s = ds[i]
        rec = st.slide(name)
        for b in ("x1", "x2", "x3"):
            assert s[b].dtype == torch.uint8 and s[b].shape == (3, 32, 32)
            np.testing.assert_array_equal(s[b].permute(1, 2, 0).numpy(), rec.read(b, j))
        for b in ("y1", "y2", "y3"):
            np.testing.assert_array_equal(s[b].numpy(), rec.read(b, j))
        assert int(s["index"]) == i


def test_batched_fetch_equals_single_fetch_in_any_order(store):
    ds = PatchDataset(store, fields=("x3", "y1"))
    idx = [300, 3, 200, 3, 0, len(ds) - 1]
    batch = ds.__getitems__(idx)
    for k, i in enumerate(idx):
        single = ds[i]
        assert set(batch[k]) == {"x3", "y1", "index"}
        assert torch.equal(batch[k]["x3"], single["x3"]) and int(batch[k]["index"]) == i


def test_dataloader_with_workers_and_pickling(store):
    ds = PatchDataset(store, split="test")
    assert pickle.loads(pickle.dumps(ds))._store is None
    loader = DataLoader(
        ds, batch_size=16, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    seen = torch.cat([b["index"] for b in loader])
    assert sorted(seen.tolist()) == list(range(len(ds)))
    assert next(iter(loader))["x1"].shape == (16, 3, 32, 32)


def test_incomplete_slides_are_invisible_and_errors_are_clear(store, tmp_path):
    st = PatchStore.open(store, mode="a")
    layout = st.slides()[0].layout
    attrs = {"split": "train", "source": "x", "fingerprint": "0"}
    w = st.begin_slide("zz_partial", attrs, layout, 5)
    assert "zz_partial" not in PatchDataset(store, split="train").slide_names
    del w
    del st.root["zz_partial"]
    with pytest.raises(MsnError, match="has no patches"):
        PatchDataset(store, split="sub-train")
    with pytest.raises(MsnError, match="no such patch store"):
        PatchDataset(str(tmp_path / "missing.zarr"))
    with pytest.raises(ValueError, match="unknown fields"):
        PatchDataset(store, fields=("x4",))
    with pytest.raises(IndexError):
        PatchDataset(store)[10**6]

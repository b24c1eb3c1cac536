"""QuPath-native outputs of msn predict: the OME-TIFF mask and the GeoJSON objects."""

from __future__ import annotations

import json
import tracemalloc
import uuid
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from slides import pattern, write_pyramid
from test_predict import CLASSES, make_checkpoints

from msn_cli.errors import MsnUsageError
from msn_cli.io.annotations import LabelledPolygon, PolygonLabels
from msn_cli.io.export import own_class_probability, trace_regions
from msn_cli.io.maskreader import read_description
from msn_cli.io.maskwriter import sample_index
from msn_cli.io.ometiff import CLASSES_NAMESPACE, classes_from_ome, write_mask_ome_tiff
from msn_cli.palette import class_color
from msn_cli.prediction.config import PredictConfig, PredictJob
from msn_cli.prediction.partial import partial_dir
from msn_cli.stages.predict import predict

W, H, MPP = 1030, 100, 0.5  # 3 levels (1030 -> 258 -> 65): two SubIFDs
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def config(ck, **kw) -> PredictConfig:
    return PredictConfig(ck, **{"min_tissue": 0.0, "batch_size": 16, "workers": 1, **kw})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One slide predicted twice in one run: generic TIFF (+ GeoJSON, probabilities), OME-TIFF."""
    d = tmp_path_factory.mktemp("qupath")
    write_pyramid(d / "s.tif", pattern(W, H, seed=7), downsamples=(1, 4), mpp=MPP)
    ck = make_checkpoints(d / "ck")
    tiff = PredictJob(d / "s.tif", d / "m.tif", d / "p.zarr", d / "m.geojson")
    ome = PredictJob(d / "s.tif", d / "m.ome.tif")
    results = predict([tiff, ome], config(ck))
    assert [r.status for r in results] == ["predicted", "predicted"]
    return d, ck, tiff, ome


@pytest.fixture(scope="module")
def photo(env, tmp_path_factory):
    """A plain image (no pixel size) into an OME-TIFF with detection objects."""
    d = tmp_path_factory.mktemp("photo")
    Image.fromarray(pattern(300, 200, seed=5)).save(d / "isic.png")
    job = PredictJob(d / "isic.png", d / "isic.ome.tif", geojson=d / "isic.geojson")
    [res] = predict([job], config(env[1], geojson_type="detection"))
    assert res.status == "predicted"
    return d, job


def shoelace(ring) -> float:
    x, y = np.asarray(ring, float).T
    return abs(float((x * np.roll(y, -1) - y * np.roll(x, -1)).sum())) / 2


def strip_ids(feats: list[dict]) -> list[str]:
    """Features without their (random) ids, comparable across runs."""
    return sorted(json.dumps({**f, "id": None}, sort_keys=True) for f in feats)


def features(path) -> list[dict]:
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    return data["features"]


# -- OME-TIFF -----------------------------------------------------------------------------------


def test_ome_tiff_is_a_subifd_pyramid_with_the_generic_tiffs_pixels(env):
    d, _, tiff, ome = env
    with tifffile.TiffFile(tiff.out) as t:
        generic = [lv.asarray() for lv in t.series[0].levels]
    with tifffile.TiffFile(ome.out) as t:
        assert t.is_ome and len(t.pages) == 1  # level 0 alone in the main chain
        page = t.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8
        assert len(page.subifds) == 2 and page.dtype == np.uint8
        levels = t.series[0].levels
        assert [lv.shape for lv in levels] == [(H, W), (25, 258), (7, 65)]
        assert all(lv.keyframe.subfiletype == 1 for lv in levels[1:])
        pixels = [lv.asarray() for lv in levels]
    assert len(generic) == 3 and len(np.unique(pixels[0])) > 1
    for mine, theirs in zip(pixels, generic, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    for k, ds in enumerate((4, 16), start=1):  # sampled at each block's centre, clamped
        expect = pixels[0][sample_index(H, ds)][:, sample_index(W, ds)]
        np.testing.assert_array_equal(pixels[k], expect)
    assert not partial_dir(ome.out).exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary left


def test_ome_xml_has_the_pixel_size_in_microns_and_the_class_names(env):
    _, _, _, ome = env
    with tifffile.TiffFile(ome.out) as t:
        xml = t.ome_metadata
    root = ET.fromstring(xml)
    pixels = root.find(f"{OME}Image/{OME}Pixels")
    assert float(pixels.get("PhysicalSizeX")) == MPP and float(pixels.get("PhysicalSizeY")) == MPP
    assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("Type") == "uint8"
    channel = pixels.find(f"{OME}Channel").get("Name")
    assert all(f"{k}={c}" in channel for k, c in enumerate(CLASSES))
    ann = root.find(f"{OME}StructuredAnnotations/{OME}MapAnnotation")
    assert ann.get("Namespace") == CLASSES_NAMESPACE
    assert classes_from_ome(xml) == dict(enumerate(CLASSES))
    desc = read_description(ome.out)
    assert desc["classes"] == list(CLASSES) and desc["container"] == "ome-tiff"
    assert desc["key"] == read_description(env[2].out)["key"]  # the same job


def test_finished_ome_tiff_is_recognised_and_a_format_change_redoes_it(env, photo, tmp_path):
    _, ck, _, ome = env
    [again] = predict([ome], config(ck))
    assert again.status == "skipped"
    _, pjob = photo
    job = PredictJob(pjob.slide, tmp_path / "m.tif")
    [first] = predict([job], config(ck))
    assert first.status == "predicted" and read_description(job.out).get("container") is None
    [other] = predict([job], config(ck, mask_format="ome-tiff"))  # same name, other container
    assert other.status == "predicted"
    with tifffile.TiffFile(job.out) as t:
        assert t.is_ome
        np.testing.assert_array_equal(t.series[0].levels[0].asarray(), tifffile.imread(pjob.out))
    [same] = predict([job], config(ck, mask_format="ome-tiff"))
    assert same.status == "skipped"


def test_killed_ome_run_with_geojson_resumes_and_equals_an_uninterrupted_run(
    env, photo, tmp_path, monkeypatch
):
    from msn_cli.stages import predict as stage

    ck, (_, ref) = env[1], photo
    job = PredictJob(ref.slide, tmp_path / "m.ome.tif", geojson=tmp_path / "m.geojson")
    real_save, saved = stage.BandStore.save, []

    def dying_save(self, r, labels, probs):
        if len(saved) == 3:
            raise KeyboardInterrupt
        assert probs is not None  # the GeoJSON's mean probabilities need them
        real_save(self, r, labels, probs)
        saved.append(r)

    monkeypatch.setattr(stage.BandStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        predict([job], config(ck, geojson_type="detection"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.tif.partial"]
    monkeypatch.setattr(stage.BandStore, "save", real_save)
    [res] = predict([job], config(ck, geojson_type="detection"))
    assert res.status == "resumed" and res.bands_reused == 3
    np.testing.assert_array_equal(tifffile.imread(job.out), tifffile.imread(ref.out))
    assert strip_ids(features(job.geojson)) == strip_ids(features(ref.geojson))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.geojson", "m.ome.tif"]


def test_ome_name_with_format_tiff_is_a_usage_error(env, tmp_path):
    d, ck, _, _ = env
    job = PredictJob(d / "s.tif", tmp_path / "m.ome.tif")
    with pytest.raises(MsnUsageError, match="--format"):
        predict([job], config(ck, mask_format="tiff"))
    with pytest.raises(MsnUsageError, match="--geojson-type"):
        predict([job], config(ck, geojson_type="cell"))
    assert not list(tmp_path.iterdir())


def test_ome_writer_memory_does_not_grow_with_the_height(tmp_path):
    """One strip of tiles per level: the peak follows the width, never the level's area."""
    width, rows = 1024, 32

    def peak(height: int) -> int:
        def blocks():
            for y in range(0, height, rows):
                yield np.full((rows, width), (y // rows) % 4, np.uint8)

        tracemalloc.start()
        write_mask_ome_tiff(tmp_path / f"{height}.ome.tif", width, height, blocks, mpp=0.25,
                            classes=CLASSES)  # fmt: skip
        found = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return found

    peak(1024)  # warm-up (imports, codec tables)
    small, tall = peak(1024), peak(8192)  # 1 MiB and 8 MiB level 0
    assert tall < 1.3 * small and tall < width * 8192 / 4, (small, tall)
    with tifffile.TiffFile(tmp_path / "8192.ome.tif") as t:
        assert [lv.shape for lv in t.series[0].levels] == [(8192, 1024), (2048, 256), (512, 64),
                                                           (128, 16)]  # fmt: skip
        assert (t.series[0].levels[0].asarray()[::rows, 0] == np.arange(256) % 4).all()


def test_photo_without_pixel_size(photo):
    _, job = photo
    with tifffile.TiffFile(job.out) as t:
        assert t.is_ome and "PhysicalSizeX" not in t.ome_metadata
        assert t.series[0].levels[0].shape == (200, 300)


# -- GeoJSON ------------------------------------------------------------------------------------


def test_geojson_features_are_qupath_objects_with_area_and_mean_probability(env):
    _, _, tiff, _ = env
    feats = features(tiff.geojson)
    assert len(feats) > 1
    ids = [uuid.UUID(f["id"]) for f in feats]
    assert all(i.version == 4 for i in ids) and len(set(ids)) == len(ids)
    for f in feats:
        props = f["properties"]
        assert props["objectType"] == "annotation"
        name = props["classification"]["name"]
        assert props["classification"]["color"] == list(class_color(CLASSES.index(name)))
        m = props["measurements"]
        assert set(m) == {"Area µm^2", "Mean probability"}
        rings = f["geometry"]["coordinates"]
        px2 = shoelace(rings[0]) - sum(shoelace(r) for r in rings[1:])
        assert m["Area µm^2"] == pytest.approx(px2 * MPP * MPP, rel=1e-12)
        assert 0.0 <= m["Mean probability"] <= 1.0


def test_mean_probability_is_the_zarr_probability_of_the_class_over_the_polygon(env):
    """Traced at level 0 (the slide is small): each pixel reads the 16 x 16 block holding it."""
    _, _, tiff, _ = env
    mask = tifffile.imread(tiff.out)
    probs = zarr.open_array(str(tiff.probabilities), mode="r")[:]
    yy, xx = np.mgrid[0:H, 0:W]
    own = probs[mask, yy // 16, xx // 16].astype(np.float64)
    means = []
    for f in features(tiff.geojson):
        k = CLASSES.index(f["properties"]["classification"]["name"])
        rings = [np.array(r, float) for r in f["geometry"]["coordinates"]]
        poly = LabelledPolygon(k, CLASSES[k], rings[0], tuple(rings[1:]))
        inside = PolygonLabels([poly], (W, H), background=255).region(0, 0, 1, H, W) == k
        assert inside.any() and (mask[inside] == k).all()
        got = f["properties"]["measurements"]["Mean probability"]
        assert got == pytest.approx(own[inside].mean(), abs=1e-9)
        means.append(got)
    assert len(set(np.round(means, 6))) > 1  # not one constant


def test_detection_objects_and_pixel_areas_without_a_pixel_size(photo):
    _, job = photo
    for f in features(job.geojson):
        assert f["properties"]["objectType"] == "detection"
        m = f["properties"]["measurements"]
        assert set(m) == {"Area px^2", "Mean probability"}
        rings = f["geometry"]["coordinates"]
        assert m["Area px^2"] == pytest.approx(shoelace(rings[0]) - sum(map(shoelace, rings[1:])))


def test_geojson_added_to_a_finished_mask(env, photo, tmp_path):
    """From the finished Zarr when there is one (skipped), else by predicting again."""
    d, ck, tiff, _ = env
    job = PredictJob(tiff.slide, tiff.out, tiff.probabilities, tmp_path / "late.geojson")
    [res] = predict([job], config(ck))
    assert res.status == "skipped"

    assert strip_ids(features(job.geojson)) == strip_ids(features(tiff.geojson))
    pd, pjob = photo
    late = PredictJob(pjob.slide, pjob.out, geojson=tmp_path / "isic.geojson")
    [res] = predict([late], config(ck, geojson_type="detection"))
    assert res.status == "predicted"  # no probabilities kept: predicted again, same result
    assert strip_ids(features(late.geojson)) == strip_ids(features(pjob.geojson))


# -- the pieces, on cases built by hand ---------------------------------------------------------


def test_mean_probability_on_a_constructed_case():
    """Two class-1 squares; class 1's probability is set per 16 x 16 block."""
    labels = np.zeros((64, 64), np.uint8)
    labels[8:24, 8:24] = 1  # 64 px in each of blocks (0,0), (0,1), (1,0), (1,1)
    labels[40:48, 36:44] = 1  # inside block (2, 2)
    labels[36:52, 4:12] = 2
    probs = np.zeros((3, 4, 4), np.float16)
    probs[1] = [[1.0, 0.5, 0, 0], [0.5, 0.0, 0, 0], [0, 0, 0.25, 0], [0, 0, 0, 0]]
    probs[2] = 0.75
    own = own_class_probability(labels, 1, (64, 64), [probs[:, :1], probs[:, 1:]], 16)
    regions = trace_regions(labels, 1, ("bg", "a", "b"), (64, 64), values=own)
    got = sorted((r.polygon.label, r.pixels, r.mean) for r in regions)
    assert got == [(1, 64, 0.25), (1, 256, 0.5), (2, 128, 0.75)]


@pytest.mark.parametrize(("ds", "size"), [(1, (70, 45)), (4, (301, 130)), (64, (1100, 700))])
def test_own_class_probability_reads_the_block_of_each_pixels_sample(ds, size):
    rng = np.random.default_rng(ds)
    w0, h0 = size
    labels = rng.integers(0, 3, (len(sample_index(h0, ds)), len(sample_index(w0, ds))))
    probs = rng.random((3, -(-h0 // 16), -(-w0 // 16))).astype(np.float16)
    cuts = np.sort(rng.choice(np.arange(1, probs.shape[1]), 2, replace=False)).tolist()
    strips = np.split(probs, cuts, axis=1)
    got = own_class_probability(labels.astype(np.uint8), ds, size, strips, 16)
    for r, y in enumerate(sample_index(h0, ds)):
        for c, x in enumerate(sample_index(w0, ds)):
            assert got[r, c] == probs[labels[r, c], y // 16, x // 16]
    with pytest.raises(ValueError, match="strips cover"):
        own_class_probability(labels.astype(np.uint8), ds, size, strips[:-1], 16)


def test_traced_regions_cover_exactly_their_pixels():
    """Random classes (diagonal contacts included): each polygon's pixels and mean agree with
    an independent rasterisation, and the regions of a class add up to its pixels."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    values = rng.random(labels.shape)
    regions = trace_regions(labels, 1, ("a", "b", "c"), (50, 40), values=values)
    for k in (1, 2):
        mine = [r for r in regions if r.polygon.label == k]
        assert sum(r.pixels for r in mine) == np.count_nonzero(labels == k)
    for r in regions:
        inside = (
            PolygonLabels([r.polygon], (50, 40), 255).region(0, 0, 1, 40, 50) == r.polygon.label
        )
        assert r.pixels == np.count_nonzero(inside) and (labels[inside] == r.polygon.label).all()
        assert r.mean == pytest.approx(values[inside].mean(), rel=1e-12)

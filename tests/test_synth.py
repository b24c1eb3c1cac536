"""Tests of the synthetic data generator (msn_cli.synth): format, exactness, premise."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import openslide
import pytest
from PIL import Image

from msn_cli.errors import MsnUsageError
from msn_cli.synth import (
    CLASS_NAMES,
    MANIFEST_COLUMNS,
    generate,
    split_counts,
    texture,
    write_synthetic_photo,
    write_synthetic_slide,
)
from msn_cli.synth.geometry import fill_polygon
from msn_cli.synth.layout import BENIGN, IN_SITU, INVASIVE, NORMAL


def _read(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    w, h = slide.level_dimensions[level]
    return np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB")).astype(np.float64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small non-square JPEG slide with annotations."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.tif"
    return write_synthetic_slide(path, size=(1024, 768), seed=3)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A 2048 x 2048 JPEG slide (structures at half scale, textures at full), for the premise."""
    path = tmp_path_factory.mktemp("full") / "full.tif"
    return write_synthetic_slide(path, size=(2048, 2048), seed=0)


def test_openslide_reads_pyramid(tiny):
    slide = openslide.OpenSlide(tiny.path)
    assert openslide.OpenSlide.detect_format(tiny.path) == "generic-tiff"
    assert slide.level_count == 4
    assert slide.dimensions == (1024, 768)
    assert slide.level_dimensions == ((1024, 768), (256, 192), (64, 48), (16, 12))
    np.testing.assert_allclose(slide.level_downsamples, (1, 4, 16, 64))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    np.testing.assert_allclose(tiny.level_downsamples, slide.level_downsamples)


def test_lossless_round_trip_level0_and_level2(tmp_path):
    truth = write_synthetic_slide(
        tmp_path / "s.tif", size=(1000, 700), seed=5, compression="deflate", annotations=False
    )
    slide = openslide.OpenSlide(truth.path)
    region = np.asarray(slide.read_region((300, 200), 0, (400, 300)).convert("RGB"))
    np.testing.assert_array_equal(region, truth.render(300, 200, 400, 300))
    whole = truth.render(0, 0, 1008, 704).astype(np.float64)  # whole 16 x 16 blocks
    expected = whole.reshape(44, 16, 63, 16, 3).mean(axis=(1, 3))
    got = _read(slide, 2)  # 63 x 44; the last row/column are partial blocks
    assert np.abs(got[:-1, :-1] - expected[:-1, :-1]).max() <= 2.0


def test_jpeg_round_trip_close(tiny):
    slide = openslide.OpenSlide(tiny.path)
    region = np.asarray(slide.read_region((512, 256), 0, (256, 256)).convert("RGB"))
    err = np.abs(region.astype(float) - tiny.render(512, 256, 256, 256)).mean()
    assert err < 8.0


def test_single_level_and_non_integer_downsamples(tmp_path):
    one = write_synthetic_slide(tmp_path / "one.tif", size=(600, 500), levels=(1,))
    assert openslide.OpenSlide(one.path).level_count == 1
    odd = write_synthetic_slide(tmp_path / "odd.tif", size=(1001, 750), levels=(1, 4, 16.5))
    slide = openslide.OpenSlide(odd.path)
    assert slide.level_count == 3
    assert slide.level_dimensions == odd.level_dimensions == ((1001, 750), (251, 188), (61, 46))
    assert slide.level_downsamples[1] != 4.0
    np.testing.assert_allclose(slide.level_downsamples, odd.level_downsamples, rtol=1e-3)
    with pytest.raises(MsnUsageError):
        write_synthetic_slide(tmp_path / "bad.tif", size=(512, 512), levels=(2, 4))
    with pytest.raises(MsnUsageError):
        write_synthetic_slide(tmp_path / "bad.tif", size=(512, 512), compression="webp")


def test_geojson_is_qupath_form_and_exact(tiny):
    doc = json.loads(tiny.geojson.read_text())
    assert doc["type"] == "FeatureCollection"
    names = set()
    labels = np.full((768, 1024), 255, np.uint8)
    for feature in doc["features"]:
        cls = feature["properties"]["classification"]
        assert cls["name"] in CLASS_NAMES and len(cls["color"]) == 3
        names.add(cls["name"])
        geom = feature["geometry"]
        polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        assert geom["type"] in ("Polygon", "MultiPolygon")
        for rings in polygons:
            ring = np.array(rings[0])
            assert (ring[0] == ring[-1]).all()
            assert ring.min() >= 0 and ring[:, 0].max() <= 1024 and ring[:, 1].max() <= 768
            fill_polygon(labels, ring[:-1], CLASS_NAMES.index(cls["name"]))
    assert names == set(CLASS_NAMES)
    np.testing.assert_array_equal(labels, tiny.label_map())


def test_asap_xml(tiny):
    root = ET.parse(tiny.xml).getroot()
    assert root.tag == "ASAP_Annotations"
    annotations = root.findall("./Annotations/Annotation")
    assert {a.get("PartOfGroup") for a in annotations} == set(CLASS_NAMES)
    for a in annotations:
        assert a.get("Type") == "Polygon" and a.get("Color").startswith("#")
        coords = a.findall("./Coordinates/Coordinate")
        assert [int(c.get("Order")) for c in coords] == list(range(len(coords)))
        float(coords[0].get("X")), float(coords[0].get("Y"))
    groups = [g.get("Name") for g in root.findall("./AnnotationGroups/Group")]
    assert groups == list(CLASS_NAMES)
    parts = sum(len(r.parts) for r in tiny.layout.regions)
    assert len(annotations) == parts


def test_deterministic(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", size=(512, 384), seed=7)
    b = write_synthetic_slide(tmp_path / "b.tif", size=(512, 384), seed=7)
    c = write_synthetic_slide(tmp_path / "c.tif", size=(512, 384), seed=8)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.geojson.read_bytes() == b.geojson.read_bytes()
    assert a.xml.read_bytes() == b.xml.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()


def test_generate_manifest(tmp_path):
    manifest = generate(tmp_path / "out", slides=4, size=512, seed=1)
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["split"] for r in rows] == ["train", "train", "sub-train", "test"]
    for r in rows:
        for key in ("slide", "annotations"):
            assert not r[key].startswith("/")
            assert (manifest.parent / r[key]).is_file()
        assert (manifest.parent / r["slide"]).with_suffix(".xml").is_file()
    assert split_counts(3) == (1, 1, 1) and split_counts(10) == (6, 2, 2)
    with pytest.raises(MsnUsageError):
        generate(tmp_path / "few", slides=2, size=512)
    with pytest.raises(MsnUsageError):
        generate(tmp_path / "kind", slides=3, size=512, kind="ct")


def test_photo_kind(tmp_path):
    manifest = generate(tmp_path / "ph", slides=3, size=400, seed=2, kind="photo")
    rows = list(csv.DictReader(manifest.open()))
    assert [r["split"] for r in rows] == ["train", "sub-train", "test"]
    for r in rows:
        img = Image.open(manifest.parent / r["slide"])
        mask = Image.open(manifest.parent / r["annotations"])
        assert img.format == "JPEG" and mask.format == "PNG"
        assert img.size == mask.size == (400, 300)
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) == {0, 255}
    one = write_synthetic_photo(tmp_path / "p.jpg", tmp_path / "p.png", (320, 240), seed=9)
    assert 0.02 < one.lesion_fraction < 0.5


def _diag_ratio(grey: np.ndarray, mask: np.ndarray) -> float:
    """Mean |difference| along (1, -1) over that along (1, 1): < 1 for the benign fibres."""
    anti = np.abs(grey[1:, :-1] - grey[:-1, 1:])
    diag = np.abs(grey[1:, 1:] - grey[:-1, :-1])
    m = mask[1:, 1:] & mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:]
    return float(anti[m].mean() / diag[m].mean())


def test_premise_fine_detail_and_context(full):
    slide = openslide.OpenSlide(full.path)
    x1, x3 = _read(slide, 0), _read(slide, 2)
    lab1, lab3 = full.label_map(1), full.label_map(16)
    look = full.appearance_map(0, 0, 2048, 2048)
    grey1, grey3 = x1.mean(axis=2), x3.mean(axis=2)
    # normal vs benign: fine texture differs at level 0 ...
    normal = (lab1 == NORMAL) & (look == texture.NORMAL)
    benign = (lab1 == BENIGN) & (look == texture.BENIGN)
    assert _diag_ratio(grey1, benign) < 0.75 < 0.9 < _diag_ratio(grey1, normal)
    assert grey1[normal].std() > 15 and grey1[benign].std() > 15
    # ... but at 16x both are the same flat colour
    n3, b3 = x3[lab3 == NORMAL], x3[lab3 == BENIGN]
    assert np.abs(n3.mean(axis=0) - b3.mean(axis=0)).max() < 3.0
    assert n3.mean(axis=1).std() < 4 and b3.mean(axis=1).std() < 4
    # in situ vs invasive: inside, the same texture at level 0 ...
    tumour_is = (lab1 == IN_SITU) & (look == texture.TUMOUR)
    tumour_inv = (lab1 == INVASIVE) & (look == texture.TUMOUR)
    assert np.abs(x1[tumour_is].mean(axis=0) - x1[tumour_inv].mean(axis=0)).max() < 3.0
    assert abs(grey1[tumour_is].std() - grey1[tumour_inv].std()) < 2.0
    # ... while at 16x every in situ duct shows its dark wall, no invasive region has one
    for region in full.layout.regions:
        if region.label in (IN_SITU, INVASIVE):
            own = np.zeros_like(lab3)
            for part in region.parts:
                fill_polygon(own, part, 1, scale=16)
            dark = (grey3[own > 0] < 100).mean()
            assert (dark > 0.05) if region.label == IN_SITU else (dark < 0.01)

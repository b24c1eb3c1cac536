"""Annotation readers, label rasterisation and label masks (msn_cli.io.annotations)."""

from __future__ import annotations

import json
import pickle
import time
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from msn_cli.errors import MsnError
from msn_cli.io.annotations import (
    BACH_CLASSES,
    AnnotationWarning,
    LabelledPolygon,
    LabelSource,
    MaskLabels,
    PolygonLabels,
    find_annotations,
    open_labels,
    out_of_bounds,
    parse_mask_values,
    read_annotations,
    write_asap_xml,
    write_geojson,
)

CLASSES = list(BACH_CLASSES)  # normal, benign, in situ, invasive


def poly(label, pts, holes=()):
    return LabelledPolygon(label=label, name=CLASSES[label], exterior=np.array(pts, float),
                           holes=tuple(np.array(h, float) for h in holes))  # fmt: skip


def square(label, x0, y0, x1, y1, holes=()):
    return poly(label, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], holes)


def brute_force(polys, size, x0, y0, ds, h, w, background=0):
    """Reference: per-pixel even-odd ray casting at pixel centres, half-open edges."""
    out = np.full((h, w), background, np.uint8)
    for r in range(h):
        for c in range(w):
            px, py = x0 + (c + 0.5) * ds, y0 + (r + 0.5) * ds
            if not (0 <= px < size[0] and 0 <= py < size[1]):
                out[r, c] = 255
                continue
            for p in polys:
                inside = False
                for ring in (p.exterior, *p.holes):
                    for (xa, ya), (xb, yb) in zip(ring, np.roll(ring, -1, 0), strict=True):
                        crosses = (ya <= py < yb) or (yb <= py < ya)
                        if crosses and xa + (py - ya) * (xb - xa) / (yb - ya) <= px:
                            inside = not inside
                if inside:
                    out[r, c] = p.label
    return out


def warns_of(fn, *args, **kw):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = fn(*args, **kw)
    return result, [str(w.message) for w in rec if issubclass(w.category, AnnotationWarning)]


# -- rasterisation, hand-checked ---------------------------------------------------------------


def test_square_float_coordinates_downsample_1():
    labels = PolygonLabels([square(1, 10.2, 5.5, 20.7, 12.5)], (40, 30))
    y = labels.region(0, 0, 1, 30, 40)
    expect = np.zeros((30, 40), np.uint8)
    expect[5:12, 10:21] = 1  # centres 10.5..20.5 in [10.2, 20.7); 5.5..11.5 in [5.5, 12.5)
    np.testing.assert_array_equal(y, expect)
    assert isinstance(labels, LabelSource)


def test_square_downsample_4_with_offset():
    labels = PolygonLabels([square(2, 10, 10, 30, 30)], (100, 100))
    y = labels.region(2, -2, 4, 10, 10)  # centres x = 4 + 4c, y = 4r
    expect = np.zeros((10, 10), np.uint8)
    expect[3:8, 2:7] = 2  # y 12..28, x 12..28 inside [10, 30)
    np.testing.assert_array_equal(y, expect)


def test_hole_reverts_to_what_was_underneath():
    big = square(1, 0, 0, 20, 20)
    holed = square(2, 4, 4, 16, 16, holes=[[(8, 8), (12, 8), (12, 12), (8, 12)]])
    y = PolygonLabels([big, holed], (30, 30)).region(0, 0, 1, 24, 24)
    assert y[10, 10] == 1 and y[5, 5] == 2 and y[2, 2] == 1 and y[22, 22] == 0
    assert (y[8:12, 8:12] == 1).all() and (y[4:16, 4:8] == 2).all()
    y = PolygonLabels([holed], (30, 30), background=255).region(0, 0, 1, 24, 24)
    assert y[10, 10] == 255 and y[5, 5] == 2


def test_later_polygons_paint_over_earlier():
    a, b = square(1, 0, 0, 10, 10), square(3, 5, 5, 15, 15)
    assert PolygonLabels([a, b], (20, 20)).region(0, 0, 1, 20, 20)[7, 7] == 3
    assert PolygonLabels([b, a], (20, 20)).region(0, 0, 1, 20, 20)[7, 7] == 1


def test_self_intersecting_bow_tie_even_odd():
    bow = poly(1, [(0, 0), (10, 10), (10, 0), (0, 10)])
    y = PolygonLabels([bow], (10, 10)).region(0, 0, 1, 10, 10)
    assert y[1, 5] == 0 and y[8, 5] == 0  # top and bottom wedges are outside
    assert y[5, 1] == 1 and y[5, 8] == 1  # left and right wedges are inside
    np.testing.assert_array_equal(y, brute_force([bow], (10, 10), 0, 0, 1, 10, 10))


@pytest.mark.parametrize("ds", [1.0, 2.5, 4.0, 7.3])
def test_random_polygons_match_brute_force(ds):
    rng = np.random.default_rng(int(ds * 10))
    polys = []
    for i in range(12):
        c, n = rng.uniform(-10, 110, 2), int(rng.integers(3, 9))
        pts = c + rng.uniform(-30, 30, (n, 2))
        hole = [c + rng.uniform(-5, 5, (4, 2))] if i % 3 == 0 else []
        polys.append(poly(int(rng.integers(1, 4)), pts, hole))
    x0, y0, h, w = -6.3, 3.1, int(120 / ds), int(110 / ds)
    got = PolygonLabels(polys, (100, 90)).region(x0, y0, ds, h, w)
    np.testing.assert_array_equal(got, brute_force(polys, (100, 90), x0, y0, ds, h, w))


@pytest.mark.parametrize("ds", [2.0, 3.7])
def test_many_small_polygons_painted_at_once_match_brute_force(ds):
    """Polygons whose windows meet no other are painted together (one pass per class); those
    that overlap, nested ones included, still paint in file order. Both paths, one region."""
    from msn_cli.io.rasterise import _alone

    rng = np.random.default_rng(7)
    polys = [  # a lattice of small squares and triangles, several sharing an edge
        square(1 + (i + j) % 3, 6 * i, 6 * j, 6 * i + 4 + (i % 2) * 2, 6 * j + 4)
        if (i * j) % 4
        else poly(2, [(6 * i, 6 * j), (6 * i + 5, 6 * j + 1), (6 * i + 2, 6 * j + 5)])
        for i in range(14)
        for j in range(12)
    ]
    polys += [square(3, 30, 20, 52, 41, holes=[[(35, 25), (45, 25), (45, 35), (35, 35)]])]
    polys += [poly(1, rng.uniform(0, 80, (5, 2))), square(2, 40, 30, 44, 33)]
    x0, y0, h, w = -3.2, 1.1, int(80 / ds), int(86 / ds)
    labels = PolygonLabels(polys, (82, 70))
    got = labels.region(x0, y0, ds, h, w)
    np.testing.assert_array_equal(got, brute_force(polys, (82, 70), x0, y0, ds, h, w))
    ra = np.array([int(np.ceil((p.bounds[1] - y0) / ds - 0.5)) for p in polys])
    rb = np.array([int(np.ceil((p.bounds[3] - y0) / ds - 0.5)) for p in polys])
    ca = np.array([int(np.ceil((p.bounds[0] - x0) / ds - 0.5)) for p in polys])
    cb = np.array([int(np.ceil((p.bounds[2] - x0) / ds - 0.5)) for p in polys])
    alone = _alone(ra, rb, ca, cb)
    assert alone.sum() > 50 and (~alone).sum() >= 3  # both paths really ran
    assert not alone[-3:].any()  # the big square, the random pentagon, the last square


def test_outside_image_is_ignore_and_background_choice():
    p = [square(1, -5, -5, 5, 5)]
    y = PolygonLabels(p, (10, 8)).region(-2, -2, 1, 12, 14)
    assert (y[:2] == 255).all() and (y[:, :2] == 255).all() and (y[10:] == 255).all()
    assert (y[:, 12:] == 255).all()
    assert (y[2:7, 2:7] == 1).all() and y[8, 8] == 0
    y = PolygonLabels(p, (10, 8), background=255).region(-2, -2, 1, 12, 14)
    assert y[8, 8] == 255 and y[3, 3] == 1
    assert out_of_bounds(p + [square(2, 1, 1, 3, 3)], (10, 8)) == 1


def test_many_polygons_fast():
    rng = np.random.default_rng(0)
    polys = []
    for _ in range(500):
        c = rng.uniform(0, 1024, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 40))
        pts = c + rng.uniform(10, 40, (40, 1)) * np.stack([np.cos(ang), np.sin(ang)], 1)
        polys.append(poly(int(rng.integers(1, 4)), pts))
    labels = PolygonLabels(polys, (1024, 1024))
    labels.region(0, 0, 4, 256, 256)
    t = time.perf_counter()
    for x0 in (0, 256, 512):
        labels.region(x0, x0, 1, 256, 256)
    labels.region(0, 0, 4, 256, 256)
    assert time.perf_counter() - t < 1.0


# -- readers ------------------------------------------------------------------------------------

SHAPES = [square(1, 10, 10, 60, 50), poly(2, [(30, 20), (90, 30), (70, 80)]),
          square(3, 5.5, 60.25, 40.75, 95)]  # fmt: skip


def test_geojson_and_asap_give_identical_labels(tmp_path):
    write_geojson(tmp_path / "a.geojson", SHAPES)
    write_asap_xml(tmp_path / "a.xml", SHAPES)
    size = (100, 100)
    ref = PolygonLabels(SHAPES, size).region(0, 0, 1, 100, 100)
    for name in ("a.geojson", "a.xml"):
        got = open_labels(tmp_path / name, CLASSES, size).region(0, 0, 1, 100, 100)
        np.testing.assert_array_equal(got, ref)
    data = json.loads((tmp_path / "a.geojson").read_text())
    props = data["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "benign"


def feature(geom, cls="Benign", **props):
    if cls is not None:
        props["classification"] = {"name": cls, "color": [0, 0, 0]}
    return {"type": "Feature", "geometry": geom, "properties": props}


SQ = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def test_geojson_forms_classes_and_multipolygon(tmp_path):
    holed = [[[20, 0], [40, 0], [40, 20], [20, 20]], [[25, 5], [35, 5], [35, 15], [25, 15]]]
    feats = [
        feature({"type": "MultiPolygon", "coordinates": [SQ, holed]}, " carcinoma IN situ "),
        feature({"type": "Polygon", "coordinates": SQ}, None, classification="Invasive"),
    ]
    f = tmp_path / "m.geojson"
    for data in (feats, {"type": "FeatureCollection", "features": feats}):
        f.write_text(json.dumps(data))
        polys = read_annotations(f, CLASSES)
        assert [p.label for p in polys] == [2, 2, 3] and len(polys[1].holes) == 1
    y = open_labels(f, CLASSES, (50, 30)).region(0, 0, 1, 30, 50)
    assert y[5, 5] == 3 and y[2, 22] == 2 and y[10, 30] == 0 and y[25, 45] == 0
    f.write_text(json.dumps(feats[0]))  # a single Feature
    assert len(read_annotations(f, CLASSES)) == 2


def test_geojson_skips_with_warnings(tmp_path):
    feats = [
        feature({"type": "Point", "coordinates": [1, 2]}),
        feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}),
        feature({"type": "Point", "coordinates": [3, 2]}),
        feature(None),
        feature({"type": "Polygon", "coordinates": []}),
        feature({"type": "Polygon", "coordinates": SQ}, None, name="benign"),  # name is no class
        feature({"type": "Polygon", "coordinates": SQ}),
    ]
    f = tmp_path / "s.geojson"
    f.write_text(json.dumps(feats))
    polys, msgs = warns_of(read_annotations, f, CLASSES)
    assert len(polys) == 1 and polys[0].label == 1
    assert any("skipped 2 annotation(s): Point geometry" in m for m in msgs)
    assert any("LineString" in m for m in msgs)
    assert any("empty geometry" in m for m in msgs)
    assert any("no classification" in m and "'benign'" in m for m in msgs)
    assert all(m.startswith(str(f)) for m in msgs)


ASAP = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}"><Coordinates>
{coords}
</Coordinates></Annotation></Annotations><AnnotationGroups/></ASAP_Annotations>"""


def asap(tmp_path, coords, group="Benign", name="A1"):
    f = tmp_path / "b.xml"
    f.write_text(ASAP.format(name=name, group=group, coords=coords))
    return f


def test_asap_sorts_by_order_and_aliases(tmp_path):
    pts = [(2, 10, 10), (0, 0, 0), (3, "0", "10"), (1, "10,0", 0)]
    coords = "\n".join(f'<Coordinate Order="{o}" X="{x}" Y="{y}"/>' for o, x, y in pts)
    (p,) = read_annotations(asap(tmp_path, coords, "Carcinoma in situ"), CLASSES)
    assert p.label == 2
    np.testing.assert_array_equal(p.exterior, [[0, 0], [10, 0], [10, 10], [0, 10]])


def err(fn, *args, **kw):
    with pytest.raises(MsnError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_bad_annotation_inputs(tmp_path):
    ok = '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="5" Y="0"/>'
    f = asap(tmp_path, ok + '<Coordinate Order="2" Y="5"/>')
    assert err(read_annotations, f, CLASSES) == f"{f}: annotation 'A1' coordinate 2: X is missing"
    f = asap(tmp_path, ok + '<Coordinate Order="2" X="abc" Y="5"/>')
    assert "annotation 'A1'" in (m := err(read_annotations, f, CLASSES)) and "'abc'" in m
    f = asap(tmp_path, ok + '<Coordinate Order="2" X="5" Y="5"/>', group="Tumour")
    m = err(read_annotations, f, CLASSES)
    assert m.startswith(str(f)) and "'Tumour'" in m
    assert "known classes: normal, benign, in situ, invasive" in m
    f.write_text('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "b">]><ASAP_Annotations/>')
    assert "DOCTYPE" in err(read_annotations, f, CLASSES)
    f.write_text("<ASAP_Annotations><Annotations>")
    assert err(read_annotations, f, CLASSES).startswith(f"{f}: not valid XML:")
    f.write_text("<svg/>")
    assert "not an ASAP annotation file" in err(read_annotations, f, CLASSES)
    g = tmp_path / "c.geojson"
    g.write_text('{"type": "FeatureCollection", "features": [')
    m = err(read_annotations, g, CLASSES)
    assert m.startswith(f"{g}: not valid JSON:") and "\n" not in m
    g.write_text('{"type": "Topology"}')
    assert "expected a FeatureCollection" in err(read_annotations, g, CLASSES)
    g.write_text(json.dumps([feature({"type": "Polygon", "coordinates": [[[0, 0], [1, "x"]]]})]))
    assert "feature 0: bad coordinates" in err(read_annotations, g, CLASSES)
    g.write_text(json.dumps([feature({"type": "Polygon", "coordinates": SQ}, "Stroma")]))
    assert "unknown class 'Stroma' (known classes: normal" in err(read_annotations, g, CLASSES)
    assert "unsupported annotation type '.txt'" in err(read_annotations, tmp_path / "a.txt", [])
    assert "not found" in err(open_labels, tmp_path / "none.xml", CLASSES, (10, 10))


def test_open_labels_warns_or_refuses_out_of_image(tmp_path):
    f = tmp_path / "o.geojson"
    write_geojson(f, [square(1, -5, -5, 5, 5), square(2, 2, 2, 4, 4)])
    _, msgs = warns_of(open_labels, f, CLASSES, (10, 10))
    assert msgs == [f"{f}: 1 of 2 annotations extend outside the 10x10 image; "
                    "the parts outside are ignored"]  # fmt: skip
    write_geojson(f, [square(1, 500, 500, 600, 600)])
    assert "all 1 annotations lie outside the 10x10 image" in err(open_labels, f, CLASSES, (10, 10))


def test_find_annotations(tmp_path):
    slide = tmp_path / "s1.ome.tiff"
    slide.touch()
    assert find_annotations(slide) is None
    (tmp_path / "s1_mask.tif").touch()
    assert find_annotations(slide) == tmp_path / "s1_mask.tif"
    (tmp_path / "s1.xml").touch()
    assert find_annotations(slide) == tmp_path / "s1.xml"
    (tmp_path / "s1.ome.geojson").touch()
    assert find_annotations(slide) == tmp_path / "s1.ome.geojson"
    (tmp_path / "s1.ome.json").touch()  # .json is not looked for
    assert find_annotations(tmp_path / "s1.ome.svs") == tmp_path / "s1.ome.geojson"


# -- masks --------------------------------------------------------------------------------------


def test_masks_agree_with_polygons(tmp_path):
    size = (200, 160)
    ref = PolygonLabels([square(1, 20, 20, 120, 100), poly(3, [(60, 30), (190, 60), (90, 150)])],
                        size)  # fmt: skip
    full = ref.region(0, 0, 1, 160, 200)
    Image.fromarray(full).save(tmp_path / "full.png")
    quarter = ref.region(0, 0, 4, 40, 50)
    tifffile.imwrite(tmp_path / "q.tif", quarter, tile=(16, 16), compression="zlib")
    for ds, (x0, y0, h, w) in [(1, (0, 0, 160, 200)), (2.5, (-10, 3.3, 70, 90))]:
        want = ref.region(x0, y0, ds, h, w)
        a = open_labels(tmp_path / "full.png", CLASSES, size).region(x0, y0, ds, h, w)
        b = open_labels(tmp_path / "q.tif", CLASSES, size).region(x0, y0, ds, h, w)
        assert ((want == 255) == (a == 255)).all() and ((want == 255) == (b == 255)).all()
        if ds == 1:
            np.testing.assert_array_equal(a, want)
        assert (a == want).mean() > 0.98 and (b == want).mean() > 0.9
    m = MaskLabels(tmp_path / "q.tif", size, num_classes=4)
    assert m.downsample == (4.0, 4.0)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m2.region(0, 0, 4, 40, 50), quarter)


def test_pyramidal_tiff_and_mask_values(tmp_path):
    raw = np.zeros((64, 96), np.uint8)
    raw[10:30, 20:60] = 200
    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:
        tw.write(raw, tile=(16, 16), subifds=1)
        tw.write(raw[::2, ::2], tile=(16, 16), subfiletype=1)
    vals = parse_mask_values("0:normal, 200:Invasive Carcinoma", CLASSES)
    assert vals == {0: 0, 200: 3}
    src = open_labels(tmp_path / "p.tif", CLASSES, (960, 640), mask_values="0:0,200:invasive")
    y = src.region(0, 0, 10, 64, 96)
    np.testing.assert_array_equal(y, np.where(raw == 200, 3, 0))
    src = open_labels(tmp_path / "p.tif", CLASSES, (960, 640), mask_values={200: 1})
    assert "mask value 0 is not in --mask-values" in err(src.region, 0, 0, 10, 8, 8)
    assert "value 200 is not a class index" in err(
        open_labels(tmp_path / "p.tif", CLASSES, (960, 640)).region, 0, 0, 10, 64, 96
    )
    assert parse_mask_values("1:ignore,2:3", CLASSES) == {1: 255, 2: 3}
    for bad in ("0=normal", "x:normal", "0:stroma", "0:9", "1:normal,1:benign", ""):
        with pytest.raises(MsnError, match="--mask-values"):
            parse_mask_values(bad, CLASSES)


def test_bad_masks(tmp_path):
    a = np.zeros((40, 50), np.uint8)
    Image.fromarray(a).save(tmp_path / "m.jpg")
    assert "JPEG" in err(open_labels, tmp_path / "m.jpg", CLASSES, (50, 40))
    Image.fromarray(a).save(tmp_path / "m.png")
    m = err(open_labels, tmp_path / "m.png", CLASSES, (100, 100))
    assert m == f"{tmp_path / 'm.png'}: mask is 50x40 but slide is 100x100 " + (
        "(not the slide's shape at any downsample)"
    )
    open_labels(tmp_path / "m.png", CLASSES, (100, 80))  # downsample 2 is fine
    open_labels(tmp_path / "m.png", CLASSES, (201, 160))  # 4.02 vs 4.0: within 1 %
    Image.fromarray(np.full((40, 50), 7, np.uint8)).save(tmp_path / "m.png")
    assert "mask value 7 is not a class index (classes 0..3" in err(
        open_labels, tmp_path / "m.png", CLASSES, (50, 40)
    )
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert "single-channel" in err(open_labels, tmp_path / "rgb.png", CLASSES, (5, 4))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    assert "cannot read TIFF mask" in err(open_labels, tmp_path / "bad.tif", CLASSES, (5, 4))
    assert "unsupported" in err(open_labels, tmp_path / "m.bmp", CLASSES, (5, 4))


def test_png_pixel_cap(tmp_path, monkeypatch):
    import msn_cli.io.labelmask as lm

    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "m.png")
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(lm, "MAX_MASK_PIXELS", 1000)
    assert "exceeds the 1000-pixel limit" in err(MaskLabels, tmp_path / "m.png", (50, 40))
    assert before == Image.MAX_IMAGE_PIXELS

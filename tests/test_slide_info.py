"""``msn info SLIDE``: a pyramid whose levels match the branches, one without mpp, a photo."""

from __future__ import annotations

import json

from PIL import Image
from slides import pattern, write_pyramid


def test_a_matching_pyramid_copies_every_branch(msn_invoke, tmp_path):
    path = tmp_path / "p.tif"
    write_pyramid(path, pattern(1024, 768), (1, 4, 16), mpp=0.25)
    r = msn_invoke("info", path, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["size"] == [1024, 768] and d["mpp"] == 0.25
    assert [lv["downsample"] for lv in d["levels"]] == [1.0, 4.0, 16.0]
    assert [lv["mpp"] for lv in d["levels"]] == [0.25, 1.0, 4.0]
    assert [row["mpp"] for row in d["serving"]] == [None, 0.5, 1.0, 2.0]
    base = d["serving"][0]
    assert base["ok"] and base["patches"] == 4 * 3
    got = [(b["downsample"], b["read_level"], b["read"]) for b in base["branches"]]
    assert got == [(1.0, 0, "copied"), (4.0, 1, "copied"), (16.0, 2, "copied")]
    # --mpp 1: X1 is level 1, X2 level 2 (both copied); X3 (64) is resampled from level 2.
    one = {row["mpp"]: row for row in d["serving"]}[1.0]["branches"]
    assert [(b["read_level"], b["read"]) for b in one] == [
        (1, "copied"), (2, "copied"), (2, "resampled")
    ]  # fmt: skip
    assert one[2]["decode_per_pixel"] == 16.0 and one[2]["view_um"] == 256 * 64 * 0.25


def test_without_mpp_only_the_base_resolution_is_served(msn_invoke, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(pattern(300, 200)).save(path)
    r = msn_invoke("info", path, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["mpp"] is None and [row["mpp"] for row in d["serving"]] == [None]
    r = msn_invoke("info", path, "--mpp", "1")
    assert r.exit_code == 1
    assert "cannot serve" in r.stdout and "records no microns per pixel" in r.stdout


def test_an_unreadable_file_is_one_line(msn_invoke, tmp_path):
    bad = tmp_path / "x.svs"
    bad.write_bytes(b"not a slide at all" * 10)
    r = msn_invoke("info", bad)
    assert r.exit_code == 1 and str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1

"""Crashes and concurrency: SIGKILL at seeded random points of every stage, then the same command
again, ends with the result of an uninterrupted run, and nothing that looks complete is
incomplete at the kill moment; ``train-meta`` reading a store while ``tile`` adds to it sees
only complete slides (docs/architecture.md §5).

The default run kills ``predict`` once here; ``tile`` and the training stages are killed once
each by ``test_tile.py``, ``test_train_meta.py`` and ``test_train_memrm_fusion.py``. ``--slow``
adds shards of ``tile`` and bands of ``predict`` picked by ``random.Random(seed)``, and every
kill point of each training stage (start, caches, the end of each epoch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from faults import (
    FilesSeen,
    WritesOf,
    child_env,
    error_lines,
    finish,
    kill_after,
    kill_point,
    msn,
    paused_after,
    run,
    waits_for_a_lock,
)
from slides import pattern, write_pyramid
from test_predict import make_checkpoints
from test_train_support import FAST, make_store, same_weights

from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.store import PatchStore
from msn_cli.stages import train_meta as train_meta_module
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.synth import write_synthetic_slide
from msn_cli.training.config import MemRMConfig, MetaConfig
from msn_cli.vocab import BRANCHES, LABELS

SLOW_SEEDS = [1, 2, 3]
EPOCHS = 3


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (to show that it was not touched)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


# -- tile ----------------------------------------------------------------------------------------


def store_arrays(url: Path, name: str) -> dict[str, np.ndarray]:
    rec = PatchStore.open(url).slide(name)
    return {k: rec.read(k, slice(None)) for k in (*BRANCHES, *LABELS, "centers", "tissue")}


@pytest.fixture(scope="module")
def tile_case(tmp_path_factory):
    """Two 1024x512 slides (11 label shards each: X3 1, X2 2, X1 8), a manifest, a reference
    store."""
    d = tmp_path_factory.mktemp("tile-faults")
    sq = np.array([[100, 80], [700, 80], [700, 400], [100, 400]], float)
    rows = ["slide,annotations,split"]
    for i, name in enumerate(("a", "b")):
        write_pyramid(d / f"{name}.tif", pattern(1024, 512, seed=20 + i))
        write_geojson(d / f"{name}.geojson", [LabelledPolygon(1, "benign", sq)])
        rows.append(f"{name}.tif,{name}.geojson,train")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    args = ["tile", "--manifest", d / "m.csv", "--patch-size", "32", "--min-tissue", "0"]
    args += ["--workers", "1"]
    run(*args, "--store", d / "ref.zarr")
    ref = {name: store_arrays(d / "ref.zarr", name) for name in ("a", "b")}
    return d, args, ref


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_tile_sigkill_at_a_random_shard_then_rerun(tile_case, tmp_path, seed):
    d, args, ref = tile_case
    url = tmp_path / "killed.zarr"
    n = kill_point(seed, range(1, 22))  # 22 label shards in all, each after its image shard
    kill_after([*args, "--store", url], FilesSeen(url, "__partial__*/y?/c/*/*"), n)
    # At the kill moment the store lists only complete slides, each exactly as it will end.
    listed = PatchStore.open(url).slides(complete_only=False)
    assert all(r.complete for r in listed)
    for r in listed:
        for k, v in store_arrays(url, r.name).items():
            np.testing.assert_array_equal(v, ref[r.name][k], err_msg=f"{r.name} {k}")
    run(*args, "--store", url)
    assert [r.name for r in PatchStore.open(url).slides()] == ["a", "b"]
    for name in ("a", "b"):
        for k, v in store_arrays(url, name).items():
            np.testing.assert_array_equal(v, ref[name][k], err_msg=f"{name} {k}")


# -- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_case(tmp_path_factory):
    """A store, the starting checkpoint directory of each stage, and lazily made references."""
    d = tmp_path_factory.mktemp("train-faults")
    n = torch.get_num_threads()
    store = make_store(d)
    tiny = {"batch_size": 4, "workers": 0, "threads": 1}
    from msn_cli.stages.train_memrm import train_memrm
    from msn_cli.stages.train_meta import train_meta

    (d / "start-meta").mkdir()
    train_meta(MetaConfig(store, str(d / "start-memrm"), epochs=1, width=0.125, **tiny))
    shutil.copytree(d / "start-memrm", d / "start-fusion")
    train_memrm(MemRMConfig(store, str(d / "start-fusion"), epochs=1, holdout=0.5, **tiny))
    torch.set_num_threads(n)
    refs: dict[str, Path] = {}

    def reference(stage: str) -> Path:
        if stage not in refs:
            refs[stage] = d / f"ref-{stage}"
            shutil.copytree(d / f"start-{stage}", refs[stage])
            run(*stage_args(stage, store, refs[stage]))
        return refs[stage]

    return d, store, reference


def stage_args(stage: str, store: str, ck: Path) -> list:
    extra = ["--width", "0.125"] if stage == "meta" else []
    return [
        f"train-{stage}",
        "--store",
        store,
        "--checkpoints",
        ck,
        "--epochs",
        EPOCHS,
        *FAST,
        *extra,
    ]


def training_kill_points(stage: str) -> list[str]:
    """Every kill point of a stage: once it has started, once its caches exist (memrm,
    fusion), after epoch k's ``last.pt``."""
    points = ["started"]
    if stage == "memrm":
        points.append("gap layers")
    if stage in ("memrm", "fusion"):
        points.append("cache")
    return points + [f"epoch {k}" for k in range(1, EPOCHS)]


def training_counter(stage_dir: Path, point: str):
    """(counter, n) that reaches n at ``point``."""
    if point == "started":
        return FilesSeen(stage_dir, "config.json"), 1
    if point == "gap layers":
        return FilesSeen(stage_dir, "gap_layers.json"), 1
    if point == "cache":
        return FilesSeen(stage_dir, "cache/*.npy"), 1
    return WritesOf(stage_dir / "last.pt"), int(point.split()[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "point"),
    [(s, p) for s in ("meta", "memrm", "fusion") for p in training_kill_points(s)],
)
def test_training_sigkill_at_every_point_then_rerun(train_case, tmp_path, stage, point):
    d, store, reference = train_case
    ck = tmp_path / "ck"
    shutil.copytree(d / f"start-{stage}", ck)
    earlier = {s: tree_digest(ck / s) for s in ("meta", "memrm") if (ck / s).is_dir()}
    stage_dir = ck / stage
    kill_after(stage_args(stage, store, ck), *training_counter(stage_dir, point))
    # At the kill moment: no final weights, a loadable last.pt, earlier stages untouched.
    assert not (stage_dir / "weights.pt").exists()
    st = CheckpointDir(ck).stage(stage)
    last = st.load_last()
    assert last is None or 1 <= int(last["epoch"]) < EPOCHS
    st.read_history()
    for s, digest in earlier.items():
        assert tree_digest(ck / s) == digest, f"{s} changed by a killed {stage}"
    run(*stage_args(stage, store, ck))
    ref = reference(stage)
    assert same_weights(stage_dir / "weights.pt", ref / stage / "weights.pt")
    assert same_weights(stage_dir / "best.pt", ref / stage / "best.pt")
    assert st.read_best() == CheckpointDir(ref).stage(stage).read_best()


# -- predict ------------------------------------------------------------------------------------

W, H = 768, 640  # 20 bands of 24 patches (patch 32)
N_BANDS = H // 32


@pytest.fixture(scope="module")
def predict_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict-faults")
    write_pyramid(d / "s.tif", pattern(W, H, seed=7), downsamples=(1, 4, 16))
    ck = make_checkpoints(d / "ck")
    args = ["predict", d / "s.tif", "--checkpoints", ck, "--min-tissue", "0", "--workers", "1"]
    args += ["--batch-size", "8", "--device", "cpu"]
    run(*args, "--out", d / "ref.tif")
    return args, tifffile.imread(d / "ref.tif")


def _unpack_band(path: Path) -> np.ndarray:
    import imagecodecs

    return np.load(io.BytesIO(imagecodecs.zstd_decode(path.read_bytes())), allow_pickle=False)


def check_predict_sigkill(predict_case, tmp_path, seed: int) -> None:
    args, ref = predict_case
    out = tmp_path / "out" / "m.tif"
    partial = out.with_name(out.name + ".partial")
    n = kill_point(seed, range(1, N_BANDS - 2))
    bands = FilesSeen(out.parent, "m.tif.partial/band*.labels.zst", "m.tif.partial/band*.empty")
    kill_after([*args, "--out", out], bands, n)
    # At the kill moment: no mask, or a complete one; every finished band readable.
    if out.exists():
        np.testing.assert_array_equal(tifffile.imread(out), ref)
    finished = sorted(partial.glob("band*.labels.zst"))
    assert len(finished) >= n
    for band in finished:
        assert _unpack_band(band).shape[1] == W
    run(*args, "--out", out)
    np.testing.assert_array_equal(tifffile.imread(out), ref)
    assert not partial.exists()
    assert sorted(os.listdir(out.parent)) == ["m.tif"]  # no temporaries left behind


def test_predict_sigkill_mid_slide_then_rerun_equals_uninterrupted(predict_case, tmp_path):
    check_predict_sigkill(predict_case, tmp_path, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_predict_sigkill_at_a_random_band_then_rerun(predict_case, tmp_path, seed):
    check_predict_sigkill(predict_case, tmp_path, seed)


# -- concurrency --------------------------------------------------------------------------------


def test_train_meta_while_tile_adds_a_slide_sees_only_complete_slides(
    tmp_path, monkeypatch, keep_threads
):
    """tile B is paused (SIGSTOP) mid-slide while train-meta lists the store, then both run at
    once: training uses exactly slide A, and the store ends with A and B complete."""
    from msn_cli.io.patches import Levels
    from msn_cli.stages.train_meta import train_meta

    write_synthetic_slide(tmp_path / "A.tif", size=(256, 256), seed=0, patch=64)
    write_synthetic_slide(tmp_path / "B.tif", size=(1024, 1024), seed=1, patch=64)
    url = tmp_path / "st.zarr"
    classes = ("normal", "benign", "in situ", "invasive")
    config = TileConfig(Levels.parse("4x 2x 1x"), classes, patch_size=64, min_tissue=0)
    tile(str(url), [SlideJob(tmp_path / "A.tif")], config)
    alone = tmp_path / "alone.zarr"
    shutil.copytree(url, alone)
    n_a = PatchStore.open(url).slide("A").n_patches

    args = ["tile", tmp_path / "B.tif", "--store", url, "--patch-size", "64", "--levels", "4x"]
    args += ["2x", "1x", "--min-tissue", "0", "--workers", "1"]
    proc = subprocess.Popen(msn(*args), stderr=subprocess.PIPE, env=child_env())
    seen = {}
    real = train_meta_module.dataset
    cfg = dict(epochs=1, width=0.125, batch_size=4, workers=0, threads=1, val_split=None)

    def dataset_then_resume_tile(*a, **kw):
        ds = real(*a, **kw)
        seen.setdefault("train", len(ds))
        proc.send_signal(signal.SIGCONT)  # B is written and committed while training runs
        return ds

    try:
        first_shard = FilesSeen(url, "__partial__B/y?/c/*/*")
        while proc.poll() is None and first_shard() < 1:
            pass
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "tile B ended before it could be paused"
        assert [r.name for r in PatchStore.open(url).slides()] == ["A"]
        monkeypatch.setattr(train_meta_module, "dataset", dataset_then_resume_tile)
        train_meta(MetaConfig(str(url), str(tmp_path / "ck"), **cfg))
    finally:
        proc.send_signal(signal.SIGCONT)
        rc = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert rc == 0, err
    assert seen["train"] == n_a
    store = PatchStore.open(url)
    assert [(r.name, r.complete) for r in store.slides(complete_only=False)] == [
        ("A", True),
        ("B", True),
    ]
    monkeypatch.setattr(train_meta_module, "dataset", real)
    train_meta(MetaConfig(str(alone), str(tmp_path / "ck-alone"), **cfg))
    weights = [tmp_path / ck / "meta" / "weights.pt" for ck in ("ck", "ck-alone")]
    assert same_weights(*weights)  # trained on exactly slide A
    assert json.loads((tmp_path / "ck" / "model.json").read_text())["classes"][1] == "benign"


def test_two_tiles_of_the_same_slide_take_turns(tile_case, tmp_path):
    """tile 1 is paused mid-slide B; tile 2 (B, then A) leaves B for later, tiles A, then waits
    on B's lock. Resumed, both exit 0 and the store equals one uninterrupted run."""
    d, args, ref = tile_case
    url = tmp_path / "st.zarr"
    (tmp_path / "m.csv").write_text(
        "slide,annotations,split\n"
        + "".join(f"{d / n}.tif,{d / n}.geojson,train\n" for n in ("b", "a"))
    )
    opts = [*args[3:], "--store", url]
    first = paused_after(["tile", d / "b.tif", *opts], FilesSeen(url, "__partial__b/*/c/*/*"), 1)
    second = subprocess.Popen(
        msn("tile", "--manifest", tmp_path / "m.csv", *opts), stderr=subprocess.PIPE,
        env=child_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not waits_for_a_lock(second.pid):
            assert second.poll() is None, second.stderr.read().decode()
            assert time.monotonic() < deadline, "tile 2 never waited for slide b"
        assert [r.name for r in PatchStore.open(url).slides()] == ["a"]  # A first, B after
    finally:
        rc1, err1 = finish(first)
        rc2, err2 = finish(second)
    assert (rc1, rc2) == (0, 0), err1 + err2
    assert [r.name for r in PatchStore.open(url).slides(complete_only=False)] == ["a", "b"]
    for name in ("a", "b"):
        for key, arr in store_arrays(url, name).items():
            np.testing.assert_array_equal(arr, ref[name][key], err_msg=f"{name}/{key}")
    leftovers = sorted(p.name for p in url.iterdir() if p.name.startswith("__"))
    assert leftovers == ["__locks__"] and [p.name for p in (url / "__locks__").iterdir()] == [
        "zarr.json"
    ]


def test_a_second_predict_onto_the_same_out_says_another_process_writes_it(predict_case, tmp_path):
    args, ref = predict_case
    out = tmp_path / "m.tif"
    bands = FilesSeen(tmp_path, "m.tif.partial/band*.labels.zst", "m.tif.partial/band*.empty")
    first = paused_after([*args, "--out", out], bands, 1)
    try:
        second = run(*args, "--out", out, check=False)
    finally:
        rc, err = finish(first)
    assert rc == 0, err
    assert second.returncode == 1
    assert error_lines(second.stderr) == [
        f"msn: error: {out}: another msn process (pid {first.pid}) is writing it; wait for it "
        "to end or choose another --out"
    ]
    np.testing.assert_array_equal(tifffile.imread(out), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


SWALLOWED = """
import os, signal, sys
from msn_cli import signals
if sys.argv[1] == "install":
    signals.install()
def interrupted_at_fork():  # a Ctrl-C landing in a fork callback (logging's locks do this)
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(10))
os.register_at_fork(after_in_parent=interrupted_at_fork)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
try:
    signals.check()  # what every loader does before each batch
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_a_loader_worker_is_silent_about_the_main_process_gone():
    """A worker's fd-sharing thread meets a closed connection once msn has exited on Ctrl-C
    (reported through sys.excepthook): no traceback under "msn: error: interrupted". Other
    errors still print."""
    import sys

    code = """
import sys, threading
from msn_cli.training.data import ignore_sigint
ignore_sigint(0)
for error in (BrokenPipeError(32, "Broken pipe"), ValueError("a real bug")):
    sys.excepthook(type(error), error, None)
    t = threading.Thread(target=lambda: (_ for _ in ()).throw(error))
    t.start()
    t.join()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=60)  # fmt: skip
    assert "Broken pipe" not in res.stderr, res.stderr
    assert res.stderr.count("ValueError: a real bug") == 2, res.stderr


@pytest.mark.parametrize("install, rc", [("install", 130), ("default", 0)])
def test_a_ctrl_c_swallowed_by_a_fork_callback_is_raised_at_the_next_batch(install, rc):
    """Python prints "Exception ignored" for a KeyboardInterrupt raised in an at-fork
    callback and carries on; msn remembers it and raises it at the next batch (without
    signals.install, the default: it is lost)."""
    import sys

    res = subprocess.run(
        [sys.executable, "-c", SWALLOWED, install], capture_output=True, text=True,
        env=child_env(), timeout=60,
    )  # fmt: skip
    assert "Exception ignored" in res.stderr and "KeyboardInterrupt" in res.stderr, res.stderr
    assert res.returncode == rc, res.stderr


def test_ctrl_c_during_training_with_loader_workers_is_interrupted_130(tmp_path):
    """A terminal sends SIGINT to the whole process group: workers included."""
    import time

    store, ck = make_store(tmp_path / "data"), tmp_path / "ck"
    args = ["train-meta", "--store", store, "--checkpoints", ck, "--width", "0.125",
            "--batch-size", "4", "--workers", "2", "--threads", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        msn(*args, "--epochs", "100"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    deadline = time.monotonic() + 120
    epoch_one = WritesOf(ck / "meta" / "last.pt")
    while proc.poll() is None and epoch_one() < 1:  # epoch 2 runs on persistent workers
        assert time.monotonic() < deadline, "training did not finish its first epoch in time"
    assert proc.poll() is None, proc.stderr.read().decode()
    # Ctrl-C reaches every process of the group; the race that broke it is the workers
    # reacting first. Make that order certain: the workers first, then (if still alive) msn.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) >= 2, children  # the two loader workers
    for child in children:
        os.kill(int(child), signal.SIGINT)
    # a dead worker is noticed at the loader's next status check (every 5 s)
    settle = time.monotonic() + 8
    while proc.poll() is None and time.monotonic() < settle:
        pass
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert rc == 130, stderr
    assert stderr.strip().splitlines()[-1] == "msn: error: interrupted", stderr
    assert "DataLoader worker" not in stderr and "Traceback" not in stderr
    assert run(*args, "--epochs", "2").returncode == 0  # resumes from the last epoch

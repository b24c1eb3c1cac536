"""The ``msn`` command line: commands, help, the error convention, --shard, MSN_STORE."""

from __future__ import annotations

import doctest
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from slides import pattern, write_pyramid
from typer.testing import CliRunner

from msn_cli import __version__, cli, console, options
from msn_cli.errors import MsnUsageError
from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.options import parse_shard

COMMANDS = [
    "tile",
    "train-meta",
    "train-memrm",
    "train-fusion",
    "predict",
    "evaluate",
    "info",
    "synth",
]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def make_slide(path, seed=0):
    """A 320x256 three-level pyramidal TIFF with one annotated square beside it."""
    write_pyramid(path, pattern(320, 256, seed))
    square = [[40.0, 40.0], [160.0, 40.0], [160.0, 160.0], [40.0, 160.0]]
    write_geojson(
        path.with_suffix(".geojson"),
        [LabelledPolygon(label=3, name="invasive", exterior=np.array(square), holes=())],
    )
    return path


# -- commands and help -----------------------------------------------------------------------


def test_help_lists_every_command(msn_invoke):
    result = msn_invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"\b{re.escape(name)}\b", result.stdout), name


def test_version(msn_invoke):
    result = msn_invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"msn {__version__}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_an_example(msn_invoke, name):
    callbacks = {c.name or c.callback.__name__: c.callback for c in cli.app.registered_commands}
    assert "Example:" in (callbacks[name].__doc__ or "")
    result = msn_invoke(name, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_help_imports_neither_torch_nor_zarr():
    code = (
        "import sys, msn_cli.cli as c\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(c.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for name in ['tile', 'info', 'train-meta', 'predict']:\n"
        "    assert CliRunner().invoke(c.app, [name, '--help']).exit_code == 0\n"
        "print('torch' in sys.modules, 'zarr' in sys.modules, 'openslide' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False", "False"]


# -- the error convention --------------------------------------------------------------------


def test_msn_error_is_one_line_and_exit_1(msn_invoke, tmp_path):
    missing = tmp_path / "missing.svs"
    result = msn_invoke("tile", missing, "--store", tmp_path / "s.zarr")
    assert result.exit_code == 1
    assert lines(result.stderr) == [f"msn: error: {missing}: no such file"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--levels", "4x", "16x", "1x"], "--levels: magnifications must be strictly decreasing"),
        (["--levels", "16x", "4x", "1q"], "--levels: '1q' is not a magnification"),
        (["--levels", "16x", "0x", "1x"], "--levels: '0x' is not a magnification"),
        (["--shard", "5/2"], "--shard: shard 5/2: need 0 <= I < N"),
        (["--shard", "1/0"], "--shard: shard 1/0"),
        (["--shard", "a/b"], "--shard: 'a/b' is not I/N"),
        (["--shard", "1-4"], "--shard: '1-4' is not I/N"),
        (["--classes", "normal"], "--classes: give at least two"),
        (["--classes", "a,A"], "--classes: class names must be distinct"),
        (["--annotations", "a.geojson", "--mask", "m.png"], "--annotations: give --annotations"),
    ],
)
def test_bad_usage_exits_2_in_one_line(msn_invoke, tmp_path, args, problem):
    store = tmp_path / "s.zarr"
    result = msn_invoke("tile", tmp_path / "x.svs", "--store", store, *args)
    assert result.exit_code == 2
    assert len(lines(result.stderr)) == 1
    assert lines(result.stderr)[0].startswith(f"msn: error: {problem}")
    assert not store.exists()


def test_click_usage_errors_exit_2(msn_invoke, tmp_path):
    assert msn_invoke("tile", "x.svs", "--workers", "-1").exit_code == 2
    assert msn_invoke("tile", "x.svs", "--levels", "16x", "4x").exit_code == 2
    assert msn_invoke("no-such-command").exit_code == 2
    result = msn_invoke("tile", "--store", tmp_path / "s.zarr")
    assert result.exit_code == 2
    assert lines(result.stderr) == ["msn: error: SLIDE: give at least one slide or --manifest"]


def test_bad_device_is_a_usage_error(msn_invoke):
    result = msn_invoke("train-meta", "--device", "gpu")
    assert result.exit_code == 2
    assert lines(result.stderr)[0].startswith("msn: error: --device: 'gpu'")


def test_debug_shows_the_traceback_of_a_stage_error(msn_invoke, tmp_path):
    not_a_store = tmp_path / "store.txt"
    not_a_store.write_text("a file, not a folder")
    args = ["tile", tmp_path / "x.svs", "--store", not_a_store]
    problem = f"msn: error: {not_a_store}: cannot open or create the store"
    plain = msn_invoke(*args)
    assert plain.exit_code == 1
    assert len(lines(plain.stderr)) == 1
    assert lines(plain.stderr)[0].startswith(problem)
    debug = msn_invoke("--debug", *args)
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert lines(debug.stderr)[-1].startswith(problem)
    assert not_a_store.read_text() == "a file, not a folder"


@pytest.mark.parametrize(
    "args",
    [
        ["--split", "validation"],
        ["--min-tissue", "2"],
        ["--unannotated", "bogus"],
        ["--patch-size", "8"],
    ],
)
def test_bad_tile_option_values_exit_2(msn_invoke, tmp_path, args):
    result = msn_invoke("tile", tmp_path / "x.svs", "--store", tmp_path / "s.zarr", *args)
    assert lines(result.stderr)[0].startswith(f"msn: error: {args[0]}: ")
    assert result.exit_code == 2


def test_debug_shows_the_traceback_of_a_slide_failure(msn_invoke, tmp_path):
    missing = tmp_path / "missing.svs"
    plain = msn_invoke("tile", missing, "--store", tmp_path / "s.zarr")
    assert plain.exit_code == 1
    assert "Traceback" not in plain.stderr
    debug = msn_invoke("--debug", "tile", missing, "--store", tmp_path / "s.zarr")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert lines(debug.stderr)[-1] == f"msn: error: {missing}: no such file"


@pytest.fixture
def raw_cli_state(monkeypatch):
    """For tests that use CliRunner directly: no --debug and no msn log handler to start with,
    and whatever the test leaves behind is undone afterwards."""
    log = logging.getLogger("msn")
    monkeypatch.setitem(console.state, "debug", False)
    monkeypatch.setattr(log, "handlers", [h for h in log.handlers if not getattr(h, "_msn", 0)])
    for var in ("MSN_DEBUG", "MSN_STORE"):
        monkeypatch.delenv(var, raising=False)


def test_debug_does_not_leak_into_the_next_invocation(raw_cli_state, tmp_path):
    runner = CliRunner()
    args = ["tile", str(tmp_path / "x.svs"), "--store", str(tmp_path / "s.zarr")]
    runner.invoke(cli.app, ["--debug", *args, "--split", "nope"])
    result = runner.invoke(cli.app, [*args, "--split", "nope"])
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr


def test_each_invocation_gets_its_own_warnings(raw_cli_state, tmp_path):
    white = tmp_path / "white.tif"
    write_pyramid(white, np.full((128, 160, 3), 255, np.uint8))
    write_geojson(white.with_suffix(".geojson"), [])
    runner = CliRunner()
    for i in range(2):  # a fresh store each time: a complete slide would be skipped
        store = str(tmp_path / f"s{i}.zarr")
        result = runner.invoke(cli.app, ["tile", str(white), "--store", store, "--workers", "1"])
        assert "Logging error" not in result.stderr
        assert any("msn: warning:" in line and "no tissue" in line for line in lines(result.stderr))


# -- --shard and the SLURM array variables ----------------------------------------------------


def test_parse_shard_doctests():
    assert doctest.testmod(options, raise_on_error=False).failed == 0


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (None, {}, (0, 1)),
        ("0/1", {}, (0, 1)),
        ("3/4", {}, (3, 4)),
        (" 1 / 2 ", {}, (1, 2)),
        (None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        (
            None,
            {
                "SLURM_ARRAY_TASK_ID": "10",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            (0, 3),
        ),
        # --shard wins over SLURM; an array job without a count is not sharded.
        ("1/2", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, (1, 2)),
        (None, {"SLURM_ARRAY_TASK_ID": "3"}, (0, 1)),
    ],
)
def test_parse_shard(text, env, expected):
    assert parse_shard(text, env) == expected


@pytest.mark.parametrize(
    ("text", "env", "option"),
    [
        ("2/2", {}, "--shard"),
        ("0/0", {}, "--shard"),
        ("-1/4", {}, "--shard"),
        ("1/2/3", {}, "--shard"),
        ("", {}, "--shard"),
        ("x", {}, "--shard"),
        (None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID"),
        (None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_*"),
        (
            None,
            {
                "SLURM_ARRAY_TASK_ID": "0",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "2",
            },
            "SLURM_ARRAY_*",
        ),
    ],
)
def test_parse_shard_refuses(text, env, option):
    with pytest.raises(MsnUsageError) as info:
        parse_shard(text, env)
    assert info.value.exit_code == 2
    assert info.value.path == option


def test_parse_shard_reads_os_environ(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert parse_shard(None) == (1, 3)


def test_parse_shard_with_a_slurm_step():
    env = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}
    got = [parse_shard(None, {**env, "SLURM_ARRAY_TASK_ID": str(i)}) for i in (1, 3, 5, 7)]
    assert got == [(0, 4), (1, 4), (2, 4), (3, 4)]


def _tiled(store, invoke) -> list[str]:
    data = json.loads(invoke("info", store, "--json").stdout)
    return [s["name"] for s in data["slides"] if s["complete"]]


def test_shard_and_slurm_pick_every_nth_slide(msn_invoke, tmp_path):
    slides = [make_slide(tmp_path / f"s{i}.tif", seed=i) for i in range(3)]
    common = ["--patch-size", "64", "--workers", "1"]
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    assert msn_invoke("tile", *slides, "--store", a, "--shard", "1/2", *common).exit_code == 0
    assert _tiled(a, msn_invoke) == ["s1"]
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert msn_invoke("tile", *slides, "--store", b, *common, env=env).exit_code == 0
    assert _tiled(b, msn_invoke) == ["s0", "s2"]


# -- MSN_STORE -----------------------------------------------------------------------------


def test_store_comes_from_msn_store(msn_invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slide = make_slide(tmp_path / "envslide.tif")
    store = tmp_path / "from-env.zarr"
    env = {"MSN_STORE": str(store)}
    result = msn_invoke("tile", slide, "--patch-size", "64", "--workers", "1", env=env)
    assert result.exit_code == 0, result.output
    assert (store / "zarr.json").is_file()
    assert not (tmp_path / options.DEFAULT_STORE).exists()
    info = msn_invoke("info", "--json", env=env)
    assert info.exit_code == 0
    data = json.loads(info.stdout)
    assert data["store"] == str(store)
    assert [(s["name"], s["complete"]) for s in data["slides"]] == [("envslide", True)]
    # an explicit --store wins over the environment
    other = tmp_path / "explicit.zarr"
    result = msn_invoke("tile", slide, "--patch-size", "64", "--store", other, env=env)
    assert result.exit_code == 0
    assert (other / "envslide").is_dir()


def test_entry_point_makes_openmp_wait_passively_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sys, "argv", ["msn", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        cli.main()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"

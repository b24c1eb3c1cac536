"""Shared fixtures."""

from __future__ import annotations

import logging

import pytest

#: Environment variables the CLI reads; cleared so that the developer's shell cannot leak in.
_CLI_ENV = (
    "MSN_STORE",
    "MSN_CHECKPOINTS",
    "MSN_DEBUG",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
)


@pytest.fixture
def msn_invoke(monkeypatch):
    """``invoke(*args, env=None)``: run the ``msn`` app in-process with Typer's CliRunner.

    Each call starts as a fresh ``msn`` process would: no --debug left over from an earlier
    call and no ``msn`` log handler bound to an earlier call's (closed) stderr. Returns the
    runner's Result (``stdout``, ``stderr`` and ``output`` are separate).
    """
    from typer.testing import CliRunner

    from msn_cli import cli, console

    for var in _CLI_ENV:
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def invoke(*args, env=None):
        monkeypatch.setitem(console.state, "debug", False)
        log = logging.getLogger("msn")
        for handler in [h for h in log.handlers if getattr(h, "_msn", False)]:
            log.removeHandler(handler)
        return runner.invoke(cli.app, [str(a) for a in args], env=env)

    return invoke


def pytest_addoption(parser):
    parser.addoption(
        "--slow", action="store_true", help="also run the slow cases (every kill point, ...)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Fault injection for the crash and bad-input suites (no tests here).

``msn`` runs in a child process; the test busy-polls the file system (no sleeps) until the
child has made its N-th write of some file pattern, then SIGKILLs it. A
``random.Random(seed)`` picks N, so a ``--slow`` run covers many kill points reproducibly. Other
helpers run a child with a size-limited write (a full disk, simulated) or measure its memory.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Longest a child may run before the test gives up on it (a hang is a failure, not a wait).
TIMEOUT = 120.0


def msn(*args: object) -> list[str]:
    """The command line of ``msn --quiet ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "msn_cli.cli", "--quiet", *map(str, args)]


def child_env() -> dict[str, str]:
    """The environment of a child: no MSN_/SLURM_ leaking in, this checkout, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(*args: object, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``msn ARGS`` to completion; with ``check``, fail the test on a non-zero exit."""
    proc = subprocess.run(
        msn(*args), capture_output=True, text=True, env=child_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"msn {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


# -- what a child has written so far -----------------------------------------------------------


class FilesSeen:
    """Counts the distinct files matching ``patterns`` under ``root`` seen so far.

    Remembered across polls, so the count never drops when a folder is renamed away (a
    committed ``__partial__`` slide group, a removed ``.partial`` folder).
    """

    def __init__(self, root: Path, *patterns: str) -> None:
        self.root, self.patterns, self.seen = Path(root), patterns, set()

    def __call__(self) -> int:
        for pattern in self.patterns:
            self.seen.update(self.root.glob(pattern))
        return len(self.seen)


class WritesOf:
    """Counts the versions of one file seen so far (an atomic rewrite is a new inode + mtime)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = Path(path), set()

    def __call__(self) -> int:
        try:
            st = os.stat(self.path)
        except OSError:
            return len(self.seen)
        self.seen.add((st.st_ino, st.st_mtime_ns, st.st_size))
        return len(self.seen)


def kill_point(seed: int, points: Sequence):
    """The kill point of ``seed``: one of ``points``, chosen by ``random.Random(seed)``."""
    return random.Random(seed).choice(list(points))


@dataclass
class Killed:
    returncode: int
    stderr: str


def kill_after(args: Sequence[object], count: Callable[[], int], n: int) -> Killed:
    """Run ``msn ARGS``; SIGKILL it as soon as ``count() >= n`` (busy-polling, no sleep).

    Fails the test if the child ends (or hangs) before reaching the kill point: a kill point
    that is never reached proves nothing.
    """
    proc = subprocess.Popen(
        msn(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"msn {args[0]} did not reach kill point {n} in time")
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert alive, f"msn {args[0]} ended (rc {proc.returncode}) before kill point {n}:\n{stderr}"
    assert proc.returncode == -signal.SIGKILL
    return Killed(proc.returncode, stderr)


def paused_after(args: Sequence[object], count: Callable[[], int], n: int) -> subprocess.Popen:
    """Start ``msn ARGS`` and SIGSTOP it as soon as ``count() >= n``; the caller resumes it
    (SIGCONT) and waits for it. Fails the test if the child ends before that point."""
    proc = subprocess.Popen(
        msn(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
    )
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and count() < n:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"msn {args[0]} did not reach point {n} in time")
    proc.send_signal(signal.SIGSTOP)
    if proc.poll() is not None:
        raise AssertionError(f"msn {args[0]} ended before point {n}: {proc.stderr.read()!r}")
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Resume a paused child and wait for it: its exit code and standard error."""
    proc.send_signal(signal.SIGCONT)
    try:
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    return rc, err


def waits_for_a_lock(pid: int) -> bool:
    """True while process ``pid`` is blocked waiting for a file lock (``/proc/locks``: ``->``)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[5] == str(pid):
            return True
    return False


# -- a full disk and memory use ----------------------------------------------------------------


def run_fsize_limited(*args: object, limit: int) -> subprocess.CompletedProcess:
    """``msn ARGS`` with every file write capped at ``limit`` bytes (a full disk, simulated).

    Works as root, where a read-only folder does not stop writes. SIGXFSZ is ignored in the
    child so that the write fails with EFBIG (an OSError) instead of killing the process.
    """

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        msn(*args),
        capture_output=True,
        text=True,
        env=child_env(),
        preexec_fn=limit_writes,
        timeout=TIMEOUT,
    )


_MEASURE = """\
import resource, subprocess, sys, time
t0 = time.monotonic()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(f"{p.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} "
                 f"{time.monotonic() - t0}\\n")
sys.stderr.write(p.stderr)
"""


@dataclass
class Measured:
    returncode: int
    max_rss_bytes: int
    seconds: float
    stderr: str


def run_measured(*args: object, timeout: float = 60.0) -> Measured:
    """``msn ARGS`` in a fresh child, with its peak resident memory and wall time.

    A wrapper process runs it, so ``RUSAGE_CHILDREN`` holds this command alone (not the earlier
    children of the test process).
    """
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *msn(*args)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )
    rc, rss_kib, seconds = proc.stdout.split()
    return Measured(int(rc), int(rss_kib) * 1024, float(seconds), proc.stderr)


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr``."""
    return [line for line in stderr.splitlines() if line.strip()]


def file_sums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path: "nothing here changed"."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def one_error(stderr: str, *parts) -> str:
    """The one ``msn: error:`` line of ``stderr`` (no traceback, no internal error), holding
    each of ``parts``."""
    lines = error_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("msn: error: ") and "Traceback" not in stderr, lines[0]
    assert "internal error" not in lines[0], lines[0]
    for part in parts:
        assert str(part) in lines[0], lines[0]
    return lines[0]

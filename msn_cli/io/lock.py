"""Advisory, per-output locks between msn processes (``flock`` on a lock file).

Two ``tile`` runs on the same slide, or two ``predict`` runs onto the same ``--out``, would
interleave their writes. Each takes :func:`exclusive` on a lock file first. The kernel drops a
lock when its process ends, SIGKILL included, so a killed run never leaves a lock behind: the
lock file it leaves is taken over by the next run. The holder removes the file when it is done;
a waiter that then gets a lock on the removed file sees that and tries again.

Where ``fcntl`` is missing (Windows), locks are not taken.

Example:
    >>> with exclusive(Path("mask.tif.lock")):  # doctest: +SKIP
    ...     write_mask()
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class Busy(Exception):
    """Another process holds the lock; ``pid`` is its process id, when it wrote one."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by process {pid or 'unknown'}")
        self.path, self.pid = path, pid

    @property
    def holder(self) -> str:
        return f"another msn process (pid {self.pid})" if self.pid else "another msn process"


@contextmanager
def exclusive(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Raises :class:`Busy` at once if another process holds it, unless ``wait``.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = _acquire(path, wait)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # still held: a waiter on this file will see it gone and retry
        os.close(fd)


def _acquire(path: Path, wait: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise Busy(path, holder_pid(path)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file while we waited: lock its successor


def holder_pid(path: Path) -> int | None:
    """The process id written in a lock file, if readable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

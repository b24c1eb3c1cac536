"""Ctrl-C is never lost.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be. Where that is an ``os.fork`` callback (``os.register_at_fork``: logging's locks, run each
time a DataLoader starts its workers), Python prints "Exception ignored" and carries on, so
an interrupt landing in that instant used to be swallowed: training went on to its last epoch
and exited 0. :func:`install` (the console entry point calls it) keeps the default behaviour
and also remembers the interrupt; :func:`check`, called once per batch by every loader loop,
raises it again if it was swallowed.
"""

from __future__ import annotations

import signal
import threading

_pending = False


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Remember every SIGINT of this process (main thread only; elsewhere a no-op). A
    process that ignores SIGINT (``nohup``, a loader worker) keeps ignoring it."""
    global _pending
    _pending = False
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise KeyboardInterrupt (once) if a SIGINT arrived since the last check. One that
    propagated normally has already ended the command; this raises the swallowed one."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt

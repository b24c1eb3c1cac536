"""Worker threads that read a slide unit by unit and hand the results back in order.

``tile`` (a unit: one shard of one branch image, :mod:`msn_cli.stages.tile_write`) and
``predict`` (a unit: a batch-sized run of one grid row's triplets,
:func:`~msn_cli.io.patches.extract`) both decode in worker threads: OpenSlide, Pillow and the
codecs release the GIL, so no pixel is copied between processes. :func:`in_order` is that
loop, once: it keeps at most ``2 * workers`` units in flight and hands their results back in
submission order, so the consumer (a store writer, a model) works on one unit while the next
ones decode.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def worker_count(workers: int) -> int:
    """``--workers``: 0 means one per CPU."""
    return workers or os.cpu_count() or 1


@contextmanager
def in_order(work: Callable[[int], T], n: int, workers: int) -> Iterator[Iterator[T]]:
    """``work(0)``, ..., ``work(n - 1)`` in ``worker_count(workers)`` threads, yielded in order.

    The thread pool lives as long as the ``with`` block: leaving it, normally or by an
    exception, waits for the units still in flight.

    Example:
        >>> with in_order(lambda i: i * i, 5, workers=2) as results:
        ...     list(results)
        [0, 1, 4, 9, 16]
    """
    workers = worker_count(workers)
    with ThreadPoolExecutor(workers) as pool:

        def results() -> Iterator[T]:
            pending: deque[Future[T]] = deque()
            next_unit = 0
            while next_unit < n or pending:
                while next_unit < n and len(pending) < 2 * workers:
                    pending.append(pool.submit(work, next_unit))
                    next_unit += 1
                yield pending.popleft().result()

        yield results()

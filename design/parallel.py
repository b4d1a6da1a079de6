"""Map a function over chunks of work on a process pool, with progress and a serial fallback.

CIF parsing, spglib, matminer's CrystalNN and the SELFIES encoder hold the GIL, so threads do not
help; processes do. The pool uses ``spawn`` (safe with torch and MLflow threads). If it cannot
start, e.g. when the main module cannot be re-imported as for code piped to ``python -``, the work
runs in one process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)


def default_workers(n_items: int, min_items: int = 1000, cap: int = 8) -> int:
    """Processes worth starting for ``n_items`` (one below ``min_items``: the pool's start-up dominates)."""
    return min(os.cpu_count() or 1, cap) if n_items >= min_items else 1


def chunked_map(
    fn: Callable[[Sequence[Any]], list[Any]],
    items: Sequence[Any],
    workers: int,
    chunk: int = 250,
    label: str = "",
    every: int = 1000,
) -> list[Any]:
    """``fn`` applied to consecutive chunks of ``items``; the results concatenated in order.

    ``fn`` takes a list of items and returns one result per item; it must be a module-level
    function (it is pickled to the workers). Progress is logged about every ``every`` items.
    """
    n = len(items)
    jobs = [list(items[i : i + chunk]) for i in range(0, n, chunk)]
    out: list[Any] = []

    def progress() -> None:
        if label and (len(out) % every < chunk or len(out) == n):
            log.info("%s: %d/%d", label, len(out), n)

    if workers > 1 and len(jobs) > 1:
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for part in pool.map(fn, jobs):
                    out.extend(part)
                    progress()
            return out
        except (BrokenProcessPool, OSError) as err:
            log.warning("process pool unavailable (%s); continuing in one process", err)
            out = []
    for job in jobs:
        out.extend(fn(job))
        progress()
    return out

"""Work on process pools, with a serial fallback.

CIF parsing, spglib, matminer's CrystalNN and the SELFIES encoder hold the GIL, so threads do not
help; processes do. :func:`chunked_map` maps a module-level function over chunks of items on a
``spawn`` pool (safe with torch and MLflow threads; if it cannot start, e.g. when the main module
cannot be re-imported as for code piped to ``python -``, the work runs in one process).
:func:`forked_imap` runs a closure over a few large jobs in ``fork``ed processes: they inherit what
the parent has built (a loaded model) instead of importing and loading it again, which would cost
seconds a worker.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the platform says, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(n_items: int, min_items: int = 1000, cap: int = 8) -> int:
    """Processes worth starting for ``n_items`` (one below ``min_items``: the pool's start-up dominates)."""
    return min(usable_cpus(), cap) if n_items >= min_items else 1


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


_FORKED: dict[int, Callable[[Any], Any]] = {}  # the closures forked workers run, by call
_CALLS = itertools.count()


def can_fork() -> bool:
    """Whether this platform starts processes by ``fork`` (Linux; not Windows, and macOS only unsafely)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_forked(job: tuple[int, Any]) -> Any:
    call, arg = job
    return _FORKED[call](arg)


def forked_imap(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, threads: int = 1) -> Iterator[Any]:
    """``fn(job)`` for each job in ``workers`` forked processes of ``threads`` torch threads each,
    yielded in the jobs' order as they finish (the caller works on one result while the workers
    compute the next). ``fn`` may be a closure: the workers inherit it; jobs and results are
    pickled. The workers must not use a GPU (a forked process cannot). If the pool cannot start, or
    breaks (a worker killed), the jobs not yet returned run here, in turn."""
    call = next(_CALLS)
    _FORKED[call] = fn
    done = 0
    try:
        try:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                       initializer=_start_worker, initargs=(threads,))
            try:
                for result in pool.map(_run_forked, [(call, job) for job in jobs]):
                    done += 1
                    yield result
            finally:  # also when the caller stops early: jobs not started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
            return
        except (BrokenProcessPool, OSError) as err:
            log.warning("worker processes unavailable (%s); the %d jobs left run in this process", err, len(jobs) - done)
        for job in jobs[done:]:
            yield fn(job)
    finally:
        del _FORKED[call]


def map_forked(fn: Callable[[Any], Any], items: Sequence[Any], min_items: int = 1000) -> list[Any]:
    """``[fn(item) for item in items]``, in chunks in forked processes (``default_workers``) when
    there are at least ``min_items`` and the platform forks, else here. The workers inherit
    ``items``; only the results come back, so they must pickle."""
    workers = default_workers(len(items), min_items)
    if workers < 2 or not can_fork():
        return [fn(item) for item in items]
    step = -(-len(items) // (4 * workers))  # a few chunks a worker, so they finish together

    def chunk(start: int) -> list[Any]:
        return [fn(item) for item in items[start : start + step]]

    return [r for part in forked_imap(chunk, range(0, len(items), step), workers) for r in part]

"""Prefect flow ``label_bvse``: BVSE Li+ migration barriers for every Li-containing dataset structure.

Each source is read by a task (retried: it touches files); the structures are cut into chunks and
the chunks run in parallel on the flow's thread task runner, each chunk through its own
single-process oracle, so ``workers`` chunks compute at once, every structure with its time limit.
The oracle's disk cache (``<data cache>/bvse/``) makes a rerun, or a resumed interrupted run,
compute only what is missing. The table and its provenance are written at the end
(see :mod:`property_models.labels`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from design.data.sources import cache_dir
from property_models.bvse import BVSEOracle, BVSESettings, OracleResult, summarize
from property_models.labels import DEFAULT_SOURCES, LabelEntry, collect, label_rows, provenance, write_labels


def oracle_cache() -> Path:
    return cache_dir() / "bvse"


@task(name="collect-structures", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def collect_task(relpath: str, element: str, max_sites: int) -> tuple[list[LabelEntry], dict]:
    return collect(relpath, element, max_sites)


@task(name="bvse-chunk", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def bvse_chunk(entries: list[LabelEntry], settings: dict, cache: str, label: str) -> list[OracleResult]:
    oracle = BVSEOracle(cache, BVSESettings(**settings), workers=1)
    return oracle.evaluate([e.structure for e in entries], label=label, every=len(entries))


@flow(name="label_bvse")
def label_bvse(
    out: str,
    sources: list[str] | None = None,
    settings: dict | None = None,
    max_sites: int = 20,
    chunk: int = 40,
    cache: str | None = None,
) -> dict:
    """Label, write ``out`` and its provenance; return the provenance dict. Parallelism comes from the
    task runner (see :func:`run`)."""
    logger = get_run_logger()
    start = time.perf_counter()
    sources = list(sources or DEFAULT_SOURCES)
    cfg = BVSESettings(**(settings or {}))
    cache = cache or str(oracle_cache())
    entries: list[LabelEntry] = []
    skipped: dict[str, dict] = {}
    for src, fut in [(s, collect_task.submit(s, cfg.element, max_sites)) for s in sources]:
        got, skip = fut.result()
        logger.info("%s: %d structures with %s (skipped %s)", src, len(got), cfg.element, skip)
        entries.extend(got)
        skipped[src] = skip
    chunks = [entries[i : i + chunk] for i in range(0, len(entries), chunk)]
    futures = [
        bvse_chunk.submit(part, asdict(cfg), cache, f"BVSE chunk {i + 1}/{len(chunks)}") for i, part in enumerate(chunks)
    ]
    results: list[OracleResult] = []
    for fut in futures:
        results.extend(fut.result())
        logger.info("BVSE labels: %d/%d structures done", len(results), len(entries))
    table = label_rows(entries, results)
    prov = provenance(sources, cfg, table, skipped, time.perf_counter() - start)
    path = write_labels(table, prov, out)
    logger.info("wrote %d labels (%s) to %s", len(table), summarize(results), path)
    return prov


def run(out: str, workers: int, **kwargs) -> dict:
    """Run :func:`label_bvse` with ``workers`` chunks in parallel."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    return label_bvse.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))(out, **kwargs)

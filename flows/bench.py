"""Prefect flow ``benchmark``: run the crystal benchmark on a trained generator and log it to MLflow.

The numbers go to the MLflow experiment ``<domain>-benchmark`` (metrics, the model URI and sizes
as params, the JSON and the printed table as artifacts); the JSON is also written to ``json_out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task


@task(name="crystal-benchmark")
def crystal_benchmark_task(model: str, n: int, seed: int, reference: str | None, w1_samples: int,
                           cov_samples: int | None, temperature: float | None,
                           constrained: bool | None = None) -> dict:
    from design.api import load_generator
    from design.benchmark import run_crystal_benchmark

    return run_crystal_benchmark(load_generator(model), n, seed, reference, w1_samples, cov_samples,
                                 temperature=temperature, constrained=constrained)


@flow(name="benchmark")
def benchmark(
    model: str,
    n: int = 10_000,
    seed: int = 0,
    reference: str | None = None,
    json_out: str | None = None,
    w1_samples: int = 1000,
    cov_samples: int | None = None,
    temperature: float | None = None,
    constrained: bool | None = None,
    tracking_uri: str | None = None,
    experiment: str = "crystal-benchmark",
) -> dict:
    """Benchmark generator ``model`` (checkpoint path or models:/ URI); return the metrics dict."""
    import mlflow

    from design.benchmark import format_table, write_json
    from design.tracking import store

    logger = get_run_logger()
    metrics = crystal_benchmark_task(model, n, seed, reference, w1_samples, cov_samples, temperature,
                                     constrained)
    table = format_table(metrics)
    if json_out:
        write_json(metrics, json_out)
    experiment_id = store.setup(tracking_uri, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bench-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({"model": model, "n": n, "seed": seed, "reference": metrics["info"]["reference"],
                           "w1_samples": w1_samples, "cov_samples": str(cov_samples),
                           "temperature": metrics["info"]["temperature"],
                           "constrained_decoding": metrics["info"]["constrained_decoding"]})
        mlflow.log_metrics(store.finite_metrics(metrics))
        mlflow.log_text(table, "benchmark.txt")
        mlflow.log_text(json.dumps(metrics, indent=2, default=str), "benchmark.json")
        metrics["info"]["run_id"] = run.info.run_id
    logger.info("benchmark of %s logged to MLflow run %s%s", model, run.info.run_id,
                f"; JSON in {Path(json_out).resolve()}" if json_out else "")
    return metrics

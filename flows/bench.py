"""Prefect flows ``benchmark`` (crystals) and ``benchmark-molecule``: benchmark a trained generator
and log it to MLflow.

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
                           cov_samples: int | None, generate: dict | None = None) -> dict:
    from design.api import load_generator
    from design.benchmark import run_crystal_benchmark

    return run_crystal_benchmark(load_generator(model, generate=generate), n, seed, reference, w1_samples, cov_samples)


@task(name="molecule-benchmark")
def molecule_benchmark_task(model: str, n: int, seed: int, reference: str | None, options: dict,
                            generate: dict | None = None) -> dict:
    from design.api import load_generator
    from design.benchmark_molecule import run_molecule_benchmark

    return run_molecule_benchmark(load_generator(model, generate=generate), n, seed, reference, **options)


def _record(metrics: dict, table: str, params: dict, tracking_uri: str | None, experiment: str, model: str,
            json_out: str | None) -> dict:
    """Log one benchmark as an MLflow run (params, finite metrics, table and JSON artifacts)."""
    import mlflow

    from design.tracking import store

    experiment_id = store.setup(tracking_uri, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bench-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics(store.finite_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()}))
        mlflow.log_text(table, "benchmark.txt")
        mlflow.log_text(json.dumps(metrics, indent=2, default=str), "benchmark.json")
        metrics["info"]["run_id"] = run.info.run_id
    get_run_logger().info("benchmark of %s logged to MLflow run %s%s", model, run.info.run_id,
                          f"; JSON in {Path(json_out).resolve()}" if json_out else "")
    return metrics


@flow(name="benchmark")
def benchmark(
    model: str,
    n: int = 10_000,
    seed: int = 0,
    reference: str | None = None,
    json_out: str | None = None,
    w1_samples: int = 1000,
    cov_samples: int | None = None,
    generate: dict | None = None,
    tracking_uri: str | None = None,
    experiment: str = "crystal-benchmark",
) -> dict:
    """Benchmark crystal generator ``model`` (checkpoint path or models:/ URI) with its ``generate``
    settings overridden by ``generate`` (e.g. {"latent_prior": "mixture"}); return the metrics dict."""
    from design.benchmark import format_table, write_json

    metrics = crystal_benchmark_task(model, n, seed, reference, w1_samples, cov_samples, generate)
    if json_out:
        write_json(metrics, json_out)
    params = {"model": model, "n": n, "seed": seed, "reference": metrics["info"]["reference"],
              "w1_samples": w1_samples, "cov_samples": str(cov_samples),
              "temperature": metrics["info"]["temperature"],
              "constrained_decoding": metrics["info"]["constrained_decoding"],
              "latent_prior": metrics["info"]["latent_prior"], "prior_spread": metrics["info"]["prior_spread"]}
    return _record(metrics, format_table(metrics), params, tracking_uri, experiment, model, json_out)


@flow(name="benchmark-molecule")
def molecule_benchmark(
    model: str,
    n: int = 30_000,
    seed: int = 0,
    reference: str | None = None,
    json_out: str | None = None,
    options: dict | None = None,
    generate: dict | None = None,
    tracking_uri: str | None = None,
    experiment: str = "molecule-benchmark",
) -> dict:
    """MOSES benchmark of molecule generator ``model``; ``options`` holds the keyword arguments of
    :func:`design.benchmark_molecule.run_molecule_benchmark` (train, fcd_samples, ...), ``generate``
    overrides the generator's sampling settings."""
    from design.benchmark_molecule import format_table, write_json

    metrics = molecule_benchmark_task(model, n, seed, reference, dict(options or {}), generate)
    if json_out:
        write_json(metrics, json_out)
    info = metrics["info"]
    params = {"model": model, "n": n, "seed": seed, "reference": info["reference"], "temperature": info["temperature"],
              "novelty_against": info["novelty_against"],
              **{k: info[k] for k in ("fcd_samples", "fcd_reference", "snn_samples", "intdiv_samples")},
              "elbo_samples": info["heldout_fit"].get("n", 0)}
    return _record(metrics, format_table(metrics), params, tracking_uri, experiment, model, json_out)

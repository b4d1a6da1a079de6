"""Prefect flow ``ablation``: train every variant of an ablation spec, benchmark it, tabulate.

Trained generators are cached by config key like any other (``train_generator``), each variant's
benchmark is written to ``<out>/<variant>.json`` as it finishes (a rerun skips finished variants),
and every variant becomes one MLflow run in the experiment ``<base name>-ablation``. ``variants``
runs a subset (processes sharing one study each take their own). The table, of every variant
finished in ``out_dir`` so far, is written to ``<out>/ablation.md`` and ``<out>/ablation.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.train import train_generator


@task(name="benchmark-variant")
def bench_variant(checkpoint: str, bench: dict, generate: dict) -> dict:
    """Benchmark a checkpoint with the variant's own sampling settings (a reused generator's
    checkpoint carries the ``generate`` section of the run that trained it)."""
    from design.ablation import BenchSettings
    from design.api import Generator
    from design.benchmark import run_crystal_benchmark

    b = BenchSettings.model_validate(bench)
    gen = Generator.from_checkpoint(checkpoint).with_generate(**generate)
    return run_crystal_benchmark(gen, b.n, b.seed, b.reference, b.w1_samples, b.cov_samples)


@flow(name="ablation")
def ablation(spec_path: str, out_dir: str, tracking_uri: str | None = None, variants: list[str] | None = None) -> dict:
    """Run the study in ``spec_path`` (or its ``variants``); return {"results": {variant: metrics}, "table": markdown}."""
    import mlflow

    from design.ablation import format_markdown, load_spec, read_results, result_path, select_variants
    from design.tracking import store
    from design.utils import atomic_write_text

    logger = get_run_logger()
    study = load_spec(spec_path)
    spec, configs = study.spec, study.configs
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment_id = store.setup(tracking_uri, f"{study.base_name}-ablation")
    chosen = select_variants(study, variants)
    done = read_results(out, chosen)
    for name in chosen:
        cfg = configs[name]
        if name in done:
            logger.info("variant %s already benchmarked; reusing %s", name, result_path(out, name))
            continue
        logger.info("variant %s: training (or reusing) and benchmarking", name)
        checkpoint = train_generator(cfg.model_dump(mode="json"))
        metrics = bench_variant(checkpoint, spec.bench.model_dump(), cfg.generate.model_dump(mode="json"))
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"):
            mlflow.log_params(store.flatten(cfg.model_dump(mode="json")))
            mlflow.set_tags({"variant": name, "overrides": json.dumps(spec.variants[name])})
            mlflow.log_metrics(store.finite_metrics(metrics))
        atomic_write_text(result_path(out, name), json.dumps(metrics, indent=2, default=str))
    results = read_results(out, list(configs))  # with what other processes finished meanwhile
    table = format_markdown(results, spec.variants)
    atomic_write_text(out / "ablation.md", table + "\n")
    atomic_write_text(out / "ablation.json", json.dumps(results, indent=2, default=str))
    logger.info("ablation table:\n%s", table)
    return {"results": results, "table": table}

"""Prefect flow ``robustness_study``: standard vs adversarially trained property models, their
robustness and their exploitation gap on a campaign's candidates, logged to MLflow.

Thin: the study itself is :func:`property_models.exploitation.run_study` over a domain of
:mod:`property_models.studies`; this flow runs it as one task (the study folder keeps every trained
variant and judgement, so a rerun resumes) and records the result in the MLflow experiment
``<domain>-robustness``: the options as params, per variant the clean and robust metrics, curve
areas, exploitation gap and hit rate, the random baseline's hit rate, and as artifacts the table,
the JSON, the top lists and the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


def build_study(domain: str, options: dict):
    """The study object of ``domain`` (crystal or molecule) from CLI-style ``options``."""
    from property_models.studies import CrystalStudy, MoleculeStudy

    if domain == "crystal":
        from property_models.surrogate import SurrogateConfig

        cfg = SurrogateConfig(targets=[options.get("target", "e_3d")], members=options["members"],
                              epochs=options["epochs"], seed=options["seed"])
        return CrystalStudy(options["labels"], cfg, options["train_split"], options["hit_quantile"],
                            split_seed=options["seed"], workers=options["workers"],
                            time_limit_s=options["time_limit"])
    if domain == "molecule":
        from property_models.activity import ActivityConfig, target_spec

        spec = target_spec(options["target"])
        cfg = ActivityConfig(target=options["target"], task=spec["task"], members=options["members"],
                             epochs=options["epochs"], seed=options["seed"])
        return MoleculeStudy(cfg, options["trees"], eval_samples=options.get("eval_samples"), seed=options["seed"])
    raise ValueError(f"unknown study domain {domain!r}; choose crystal or molecule")


@task(name="exploitation-study", cache_policy=NO_CACHE)
def study_task(domain: str, options: dict, out_dir: str) -> dict:
    from property_models.exploitation import read_pool, run_study, variant_overrides

    pool = read_pool(options["pool"]) if options.get("pool") else None  # a missing pool fails before training
    study = build_study(domain, options)
    variants = variant_overrides(options["epsilon"], options["steps"], options["adv_weight"])
    variants = {k: v for k, v in variants.items() if k in options["variants"]}
    return run_study(study, pool, out_dir, variants, options["budgets"], options["attack_steps"], options["top_k"],
                     options["seed"], options.get("uncertainty_weight", 0.0))


def study_metrics(result: dict) -> dict[str, float]:
    """Flat MLflow metrics of a study result."""
    out: dict[str, float] = {}
    budgets = result["budgets"]
    for name, v in result["variants"].items():
        rob = v["robustness"]
        for m, curve in rob["metrics"].items():
            out[f"{name}/clean_{m}"] = curve[0]
            for eps, value in zip(budgets[1:], curve[1:], strict=True):
                out[f"{name}/robust_{m}_at_{eps:g}"] = value
            out[f"{name}/area_{m}"] = rob["area"][m]
        for k in ("gap", "gap_sd", "mae", "hit_rate", "hits", "mean_predicted", "mean_judged", "screened"):
            if "exploitation" in v:
                out[f"{name}/{k}"] = v["exploitation"][k]
    if "baseline" in result:
        out["random/hit_rate"] = result["baseline"]["hit_rate"]
        out["random/mean_judged"] = result["baseline"]["mean_judged"]
    return out


@flow(name="robustness_study")
def robustness_study(domain: str, options: dict, out_dir: str, tracking_uri: str | None = None) -> dict:
    """Run the study and log it to MLflow; return the result dict (with ``run_id``)."""
    import mlflow

    from design.tracking import store

    result = study_task(domain, options, out_dir)
    out = Path(out_dir)
    experiment_id = store.setup(tracking_uri, f"{domain}-robustness")
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"robust-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({k: str(v) for k, v in options.items()})
        mlflow.log_metrics(store.finite_metrics(study_metrics(result)))
        for name in ("study.json", "study.md", "robustness.png", "exploitation.png", "judged.csv.gz"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name), "study")
        for path in sorted(out.glob("top_*.csv")):
            mlflow.log_artifact(str(path), "study/top")
        result["run_id"] = run.info.run_id
    get_run_logger().info("robustness study logged to MLflow run %s (experiment %s-robustness)", run.info.run_id, domain)
    return result

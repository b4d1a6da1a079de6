"""Prefect tasks of a closed-loop campaign (a config with ``surrogate`` and ``verify`` sections).

Thin wrappers of :mod:`property_models.campaign`: prepare the property models (oracle labels, the
generator's property table, the starting surrogate, the hit threshold), then per round score,
verify and learn, and at the end rank with the last surrogate and measure enrichment. Tasks pass
paths, not models.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from design.config import config_from_dict


@task(name="prepare-property-models", cache_policy=NO_CACHE)
def prepare_task(config_data: dict, out_dir: str) -> dict:
    """Labels (computed by the ``label_bvse`` flow when missing), the generator's property table,
    the starting surrogate and the hit threshold."""
    from property_models import campaign
    from property_models.labels import oracle_cap

    logger = get_run_logger()
    cfg = config_from_dict(config_data)
    labels = Path(cfg.surrogate.labels)
    if not labels.is_file():
        from flows.labels import run as label_run

        logger.info("no oracle labels at %s: computing them (cached per structure, resumable)", labels)
        label_run(str(labels), cfg.verify.workers,
                  settings={"time_limit_s": cfg.verify.time_limit_s, "resolution": cfg.verify.resolution})
    table = cfg.data.property_table
    if table and not Path(table).is_file():
        counts = campaign.electrolyte_property_table(cfg.data.train, labels, table, cfg.surrogate.target)
        logger.info("generator property table %s: %s", table, counts)
    surrogate = campaign.initial_surrogate(cfg, Path(cfg.output.dir) / "surrogates")
    threshold = campaign.hit_threshold(labels, cfg.data.train, cfg.surrogate.target, cfg.verify.hit_quantile)
    logger.info("hit threshold: %s < %.3f (the %g quantile of the labelled training structures)",
                cfg.surrogate.target, threshold, cfg.verify.hit_quantile)
    return {"surrogate": str(surrogate), "threshold": threshold, "cap": oracle_cap(labels)}


@task(name="feedback-hits", cache_policy=NO_CACHE)
def steer_task(config_data: dict, k: int, out_dir: str, models: dict, checkpoint: str) -> dict:
    """Round ``k``'s feedback, the CIF texts of the hits verified before it (none without
    ``verify.feedback``), and the generator to sample it from (the trained one)."""
    from property_models import campaign

    cfg = config_from_dict(config_data)
    if not cfg.verify.feedback:
        return {"feedback": [], "checkpoint": checkpoint}
    hits = campaign.verified_hits(cfg, Path(out_dir), k, models["threshold"], models["cap"])
    return {"feedback": [s.to(fmt="cif") for s in hits], "checkpoint": checkpoint}


@task(name="score-round", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def score_task(config_data: dict, k: int, out_dir: str, surrogate: str) -> str:
    from property_models import campaign

    return str(campaign.score_round(config_from_dict(config_data), k, Path(out_dir), surrogate))


@task(name="verify-round", cache_policy=NO_CACHE)
def verify_task(config_data: dict, k: int, out_dir: str, threshold: float) -> dict:
    from property_models import campaign

    cfg = config_from_dict(config_data)
    return campaign.verify_round(cfg, k, Path(out_dir), campaign.Verifier(cfg, Path(out_dir)), threshold)


@task(name="learn-round", cache_policy=NO_CACHE)
def learn_task(config_data: dict, k: int, out_dir: str, surrogate: str, cap: float) -> str:
    from property_models import campaign

    return str(campaign.learn_round(config_from_dict(config_data), k, Path(out_dir), surrogate, cap))


def round_tasks(config_data: dict, k: int, out_dir: str, models: dict) -> None:
    """Round ``k`` after its generate and filter steps: score, verify, learn."""
    score_task(config_data, k, out_dir, models["surrogate"])
    verify_task(config_data, k, out_dir, models["threshold"])
    learn_task(config_data, k, out_dir, models["surrogate"], models["cap"])


def after_round(out_dir: Path, k: int, models: dict) -> dict:
    """The models the next round uses: the surrogate fine-tuned in round ``k``."""
    from design.generation.loop import round_dir

    return {**models, "surrogate": str(round_dir(out_dir, k) / "surrogate.pt")}


@task(name="final-ranking-and-enrichment", cache_policy=NO_CACHE)
def final_task(config_data: dict, out_dir: str, models: dict, checkpoint: str) -> dict:
    """``ranked.csv`` (with verified columns), ``top/`` CIFs, ``enrichment.json`` and the plots."""
    from design.domains import build_domain
    from design.generation.loop import write_ranking
    from property_models import campaign, plots

    cfg = config_from_dict(config_data)
    out = Path(out_dir)
    surrogate, threshold = models["surrogate"], models["threshold"]
    ranked = campaign.final_ranking(cfg, cfg.generate.rounds, out, surrogate)
    if ranked.empty:
        write_ranking(build_domain(cfg), cfg, ranked, out)
        return {"ranked": 0}
    result = campaign.enrichment(cfg, ranked, out, campaign.Verifier(cfg, out), threshold)
    write_ranking(build_domain(cfg), cfg, ranked, out)
    plots.closed_loop_figures(cfg, out, threshold)
    return {"ranked": len(ranked), **result}


def finished_round(out_dir: Path, k: int) -> dict | None:
    """A closed-loop round is finished when its fine-tuned surrogate exists; its verification metrics."""
    import json

    from design.generation.loop import round_dir

    rdir = round_dir(out_dir, k)
    if (rdir / "surrogate.pt").is_file() and (rdir / "verify.json").is_file():
        return {f"verify_{key}": v for key, v in json.loads((rdir / "verify.json").read_text()).items()}
    return None

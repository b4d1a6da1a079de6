"""Prefect tasks of a goal-directed molecule campaign (a molecule config with an ``activity`` section).

Thin wrappers of :mod:`property_models.goal`, with the same step names as ``flows/closed_loop.py``
so the ``discover`` flow drives either: prepare the activity models, per round steer the generator
toward the best so far (fine-tuning it, ``round_k/generator.pt``, and sampling around their
encodings) and score the accepted candidates, and at the end rank, report and compare with the
unsteered generator. Tasks pass paths, not models.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from design.config import config_from_dict
from property_models import goal


@task(name="prepare-activity-models", cache_policy=NO_CACHE)
def prepare_task(config_data: dict, out_dir: str) -> dict:
    """The activity ensembles' paths (each trained on its scaffold train split when missing)."""
    return {"activity": goal.ensure_models(config_from_dict(config_data))}


@task(name="steer-generator", cache_policy=NO_CACHE)
def steer_task(config_data: dict, k: int, out_dir: str, models: dict, checkpoint: str) -> dict:
    """Round ``k``'s feedback (SMILES of the best-ranked candidates before it; round 0: the seed
    actives) and the generator to sample it from (fine-tuned on that feedback)."""
    out = Path(out_dir)
    encodable = goal.encodable_by(goal.latest_generator(out, k, checkpoint))
    smiles, sample_from = goal.steer(config_from_dict(config_data), out, k, models["activity"], checkpoint, encodable)
    return {"feedback": smiles, "checkpoint": sample_from}


@task(name="score-activity", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def score_task(config_data: dict, k: int, out_dir: str, models: dict) -> dict:
    return goal.score_round(config_from_dict(config_data), k, Path(out_dir), models["activity"])


def round_tasks(config_data: dict, k: int, out_dir: str, models: dict) -> None:
    score_task(config_data, k, out_dir, models)


def finished_round(out_dir: Path, k: int) -> dict | None:
    return goal.finished_round(out_dir, k)


def after_round(out_dir: Path, k: int, models: dict) -> dict:
    return models


@task(name="final-ranking-and-report", cache_policy=NO_CACHE)
def final_task(config_data: dict, out_dir: str, models: dict, checkpoint: str) -> dict:
    """``ranked.csv``, ``top/`` files and picture, ``goal.json`` (top candidates vs the baseline)."""
    from design.domains import build_domain
    from design.generation.loop import write_ranking

    cfg = config_from_dict(config_data)
    out = Path(out_dir)
    ranked, result = goal.final_report(cfg, out, models["activity"], checkpoint)
    write_ranking(build_domain(cfg), cfg, ranked, out)
    return result

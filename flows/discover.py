"""Prefect flow ``discover``: reuse or train a generator, then rounds of generate -> filter -> rank.

A config with ``surrogate`` and ``verify`` sections makes it a closed loop (``flows/closed_loop.py``):
the property models are prepared first, and every round also scores its candidates with the
surrogate, verifies the best with the oracle and CHGNet and fine-tunes the surrogate; the end ranks
with the last surrogate and measures enrichment. A molecule config with an ``activity`` section makes
it goal-directed (``flows/goal_directed.py``): activity ensembles score every round, the generator is
fine-tuned toward the best so far and samples around them, and the end reports the top candidates
against the unsteered generator. Both modules give the same steps (:func:`campaign_steps`).

Everything is recorded in one MLflow run: the resolved config as params, the generator's
per-epoch losses and monitors (``train/*``), per-round metrics, the ranked candidates as a table
and CSV, the top candidates' structure files, and the generator as a registered model with an
alias. A campaign directory whose rounds already finished (same ``--out``) resumes at the next round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from design.config import config_from_dict, generator_key
from design.utils import atomic_write_text, strict_json
from flows.train import train_generator


@task(name="generate-round", retries=1, retry_delay_seconds=2)
def generate_round_task(checkpoint: str, config_data: dict, k: int, out_dir: str, feedback: list[str] | None = None) -> str:
    from design.api import Generator
    from design.generation.loop import generate_round

    config = config_from_dict(config_data)
    # the campaign's config decides how to sample (a reused checkpoint may predate a setting)
    generator = Generator.from_checkpoint(checkpoint).with_generate(**config.generate.model_dump(mode="json"))
    objs = [generator.domain.deserialize(t) for t in feedback or []]
    return str(generate_round(generator, config, k, Path(out_dir), feedback=objs))


@task(name="filter-round", retries=1, retry_delay_seconds=2)
def filter_round_task(config_data: dict, k: int, out_dir: str) -> dict:
    from design.domains import build_domain
    from design.generation.loop import filter_round, reference_index

    config = config_from_dict(config_data)
    domain = build_domain(config)
    return filter_round(domain, config, k, Path(out_dir), reference_index(domain, config))


@task(name="rank-candidates", retries=1, retry_delay_seconds=2)
def rank_task(config_data: dict, out_dir: str) -> str:
    from design.domains import build_domain
    from design.generation.loop import rank_campaign

    config = config_from_dict(config_data)
    rank_campaign(build_domain(config), config, config.generate.rounds, Path(out_dir))
    return str(Path(out_dir) / "ranked.csv")


def _finished_round(out_dir: Path, k: int) -> dict | None:
    from design.generation.loop import round_dir

    counts = round_dir(out_dir, k) / "counts.json"
    accepted = round_dir(out_dir, k) / "accepted.csv.gz"
    if counts.is_file() and accepted.is_file():
        return json.loads(counts.read_text())
    return None


def _check_campaign_dir(out: Path, cfg_data: dict) -> None:
    """A campaign directory resumes only the campaign it was made for."""
    from design.config import flatten_differences

    previous = out / "config.json"
    if not previous.is_file():
        return
    old = json.loads(previous.read_text())
    ignore = ("tracking", "output")
    diff = flatten_differences({k: v for k, v in old.items() if k not in ignore},
                               {k: v for k, v in cfg_data.items() if k not in ignore})
    if diff:
        raise ValueError(
            f"campaign directory {out} holds a campaign with another config (differs in {', '.join(diff[:5])}); "
            "pass another --out, or delete that directory to start over"
        )


def campaign_steps(cfg):
    """The module whose tasks extend each round (``prepare_task``, ``steer_task``, ``round_tasks``,
    ``finished_round``, ``after_round``, ``final_task``), or None for plain generate -> filter -> rank."""
    if cfg.verify is not None:
        from flows import closed_loop

        return closed_loop
    if cfg.activity is not None:
        from flows import goal_directed

        return goal_directed
    return None


@flow(name="discover")
def discover(config: dict, out_dir: str | None = None) -> dict:
    """Run a discovery campaign for ``config`` (a validated RunConfig as a dict); return a summary."""
    import mlflow

    from design.generation.loop import round_dir
    from design.generation.tables import read_table
    from design.tracking import store

    logger = get_run_logger()
    cfg = config_from_dict(config)
    cfg_data = cfg.model_dump(mode="json")
    out = Path(out_dir or Path(cfg.output.dir) / cfg.name).resolve()
    _check_campaign_dir(out, cfg_data)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.model_dump_json(indent=2))
    t0 = time.time()

    steps = campaign_steps(cfg)
    models = steps.prepare_task(cfg_data, str(out)) if steps else {}
    checkpoint = train_generator(cfg_data)

    experiment_id = store.setup(cfg.tracking.uri, cfg.tracking.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params(store.flatten(cfg_data))
        mlflow.set_tags({"generator_key": generator_key(cfg), "domain": cfg.domain, "out_dir": str(out)})
        from design.training.checkpoint import load_checkpoint

        history = load_checkpoint(checkpoint)["history"]
        store.log_metrics_series(history, step_key="epoch", prefix="train/")

        rounds = []
        for k in range(cfg.generate.rounds):
            metrics = _finished_round(out, k)
            extra = steps.finished_round(out, k) if steps and metrics is not None else None
            if metrics is not None and (not steps or extra is not None):
                logger.info("round %d already finished in %s; reusing it", k, out)
            else:
                if metrics is None:
                    steer = steps.steer_task(cfg_data, k, str(out), models, checkpoint) if steps else {}
                    generate_round_task(steer.get("checkpoint", checkpoint), cfg_data, k, str(out),
                                        steer.get("feedback", []))
                    metrics = filter_round_task(cfg_data, k, str(out))
                if steps:
                    steps.round_tasks(cfg_data, k, str(out), models)
                    extra = steps.finished_round(out, k)
            if steps:
                models = steps.after_round(out, k, models)
                metrics = {**metrics, **extra}
            rounds.append({"round": k, **metrics})
            store.log_metrics_series([rounds[-1]], step_key="round", prefix="round/")

        closing: dict = {}
        if steps:
            closing = steps.final_task(cfg_data, str(out), models, checkpoint)
            store.log_campaign_end(out, closing)
            ranked_path = out / "ranked.csv"
        else:
            ranked_path = Path(rank_task(cfg_data, str(out)))
        ranked = read_table(ranked_path)
        store.log_candidates(ranked, out, out / "top")
        # a campaign that fine-tuned its generator registers the last round's (round_k/generator.pt)
        tuned = [p for k in range(cfg.generate.rounds) if (p := round_dir(out, k) / "generator.pt").is_file()]
        version = store.register_generator(
            tuned[-1] if tuned else Path(checkpoint),
            cfg.tracking.registered_model,
            cfg.tracking.alias,
            tags={"generator_key": generator_key(cfg), "run_id": run.info.run_id,
                  **({"fine_tuned_from": checkpoint, "fine_tuned_in": str(tuned[-1].parent.name)} if tuned else {})},
        )
        wall = time.time() - t0
        final = rounds[-1]
        summary = {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": mlflow.get_tracking_uri(),
            "out_dir": str(out),
            "checkpoint": checkpoint,
            "registered_checkpoint": str(tuned[-1] if tuned else checkpoint),
            "model_uri": f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}",
            "model_version": version,
            "rounds": rounds,
            "ranked": len(ranked),
            "wall_s": wall,
            **({"closed_loop" if cfg.verify else "goal": closing} if steps else {}),
        }
        mlflow.log_metrics({"wall_s": wall, "ranked_candidates": len(ranked)})
        atomic_write_text(out / "summary.json", strict_json(summary, indent=2))
        mlflow.log_artifact(str(out / "summary.json"))
    logger.info(
        "discover finished in %.0fs: final round generated %d, structural validity %.3f, compositional validity "
        "%.3f, uniqueness %.3f, novelty %.3f; %d ranked candidates in %s",
        wall, final["generated"], final["structural_validity"], final["compositional_validity"],
        final["uniqueness"], final["novelty"], len(ranked), out,
    )
    return summary

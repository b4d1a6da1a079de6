"""Prefect flow ``train_generator``: featurise the training split, train the VAE-GAN, cache the result.

Trained generators live in ``<output.generator_cache>/<generator key>/generator.pt``; the key
hashes every config section that changes the model (see ``design.config.generator_key``), so an
existing generator is reused when, and only when, its config matches. An interrupted training run
resumes from its last epoch.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from design.api import standardised_target
from design.config import RunConfig, config_from_dict, generator_key, same_generator
from design.training.checkpoint import CheckpointError, load_checkpoint
from design.training.trainer import FINAL_NAME
from design.utils import atomic_write_text, file_lock


def generator_dir(config: RunConfig) -> Path:
    return Path(config.output.generator_cache).resolve() / generator_key(config)


def cached_generator(config: RunConfig) -> Path | None:
    """The finished generator for this config, if one exists and loads."""
    path = generator_dir(config) / FINAL_NAME
    if not path.is_file():
        return None
    try:
        blob = load_checkpoint(path)
    except CheckpointError:
        return None
    return path if blob["complete"] and same_generator(blob["config"], config) else None


@task(name="featurise-training-data", retries=2, retry_delay_seconds=5)
def featurise(config_data: dict) -> dict:
    """Resolve (download if needed) and featurise the training split; the features are cached on disk."""
    from design.data import training_set
    from design.domains import build_domain

    config = config_from_dict(config_data)
    domain = build_domain(config)
    ds = training_set(domain, config)
    y = ds.y
    std = y.std(0).clamp(min=1e-6) if len(y) > 1 else y.new_ones(y.shape[1])
    return {"rows": len(ds), "skipped": ds.skipped, "properties": list(ds.property_names),
            "mean": y.mean(0).tolist(), "std": std.tolist(), "low": y.min(0).values.tolist(),
            "high": y.max(0).values.tolist()}


@task(name="train-vaegan", retries=1, retry_delay_seconds=5)
def train_vaegan(config_data: dict, workdir: str) -> str:
    """Train (or resume training) and return the checkpoint path. A retry resumes from ``last.pt``."""
    from design.data import training_set
    from design.domains import build_domain
    from design.training.trainer import Trainer

    config = config_from_dict(config_data)
    domain = build_domain(config)
    ds = training_set(domain, config)
    result = Trainer(config, domain, ds, workdir).run()
    return str(result.checkpoint)


@flow(name="train_generator")
def train_generator(config: dict, force: bool = False) -> str:
    """Return the path of a trained generator for ``config`` (a validated RunConfig as a dict)."""
    logger = get_run_logger()
    cfg = config_from_dict(config)
    if not force:
        cached = cached_generator(cfg)
        if cached is not None:
            logger.info("reusing trained generator %s (config key %s)", cached, generator_key(cfg))
            return str(cached)
    workdir = generator_dir(cfg)
    # Two campaigns asking for the same untrained generator: the second waits, then reuses it.
    with file_lock(workdir / "training.lock",
                   on_wait=lambda: logger.info("another process is training generator %s; waiting for it",
                                               generator_key(cfg))):
        cached = None if force else cached_generator(cfg)
        if cached is not None:
            logger.info("reusing generator %s, trained meanwhile by another process", cached)
            return str(cached)
        atomic_write_text(workdir / "config.json", cfg.model_dump_json(indent=2))
        summary = featurise(cfg.model_dump(mode="json"))
        logger.info("training data: %d rows, skipped %s", summary["rows"], summary["skipped"])
        if cfg.generate.target:  # an impossible target is an error before training, not after it
            standardised_target(dict(cfg.generate.target), summary["properties"], summary["mean"], summary["std"],
                                summary["low"], summary["high"])
        return train_vaegan(cfg.model_dump(mode="json"), str(workdir))

"""Shared test setup: real data from the local mirror, an isolated data cache, a tiny trained generator."""

from __future__ import annotations

import os

import pytest

TRAIN = "crystals/mp_20_biternary/val.csv.gz"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches of the tests go to a temporary folder, not the project's data/cache."""
    old = os.environ.get("INVDES_DATA_CACHE")
    os.environ["INVDES_DATA_CACHE"] = str(tmp_path_factory.mktemp("data-cache"))
    yield
    if old is None:
        os.environ.pop("INVDES_DATA_CACHE", None)
    else:
        os.environ["INVDES_DATA_CACHE"] = old


def tiny_config(**sections):
    """A RunConfig small enough to train in seconds on CPU."""
    from design.config import config_from_dict, merge

    base = {
        "name": "tiny",
        "seed": 0,
        "data": {"train": TRAIN, "limit": 96},
        "model": {
            "latent_dim": 8, "hidden": 32, "site_dim": 16, "heads": 2, "encoder_layers": 1,
            "decoder_layers": 1, "disc_dim": 16, "disc_layers": 1, "rbf": 6, "spectral_norm": True,
        },
        "train": {"epochs": 2, "batch_size": 32, "monitor_samples": 16, "device": "cpu"},
        "generate": {"rounds": 1, "n_per_round": 16},
    }
    return config_from_dict(merge(base, sections))


@pytest.fixture(scope="session")
def real_structures():
    """120 real crystals from the training split (pymatgen Structures, as parsed from CIF)."""
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    from design.data.sources import resolve

    df = pd.read_csv(resolve(TRAIN), nrows=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A generator trained for two epochs on 96 crystals (seconds)."""
    from design.domains import build_domain
    from design.training.trainer import Trainer

    cfg = tiny_config()
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    result = Trainer(cfg, domain, ds, tmp_path_factory.mktemp("tiny-gen")).run()
    return result.checkpoint

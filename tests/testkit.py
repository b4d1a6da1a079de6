"""Plain helpers shared by the tests (importable as `testkit`; conftest.py holds only fixtures)."""

from __future__ import annotations

TRAIN = "crystals/mp_20_biternary/val.csv.gz"


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

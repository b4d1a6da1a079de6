"""Plain helpers shared by the tests (importable as `testkit`; conftest.py holds only fixtures)."""

from __future__ import annotations

import contextlib
import os

TRAIN = "crystals/mp_20_biternary/val.csv.gz"

# 16 small molecules, actives (1) are the ones with an aromatic ring: a rule a GNN can learn at once
TINY_ACTIVITY = [
    ("c1ccccc1O", 1), ("c1ccccc1N", 1), ("Cc1ccccc1", 1), ("c1ccncc1", 1), ("Clc1ccccc1", 1),
    ("c1ccc2ccccc2c1", 1), ("Oc1ccc(C)cc1", 1), ("c1ccsc1", 1),
    ("CCO", 0), ("CCCC", 0), ("CC(C)O", 0), ("C1CCCCC1", 0), ("CCN(CC)CC", 0), ("OCCO", 0),
    ("CC(=O)C", 0), ("C1CCOC1", 0),
]


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

MOLECULES_TRAIN = "molecules/moses/train.csv.gz"
MOLECULES_TEST = "molecules/moses/test.csv.gz"


def tiny_molecule_config(**sections):
    """A molecule RunConfig that trains in a few seconds on CPU (256 MOSES molecules)."""
    from design.config import config_from_dict, merge

    base = {
        "name": "tiny-molecule",
        "domain": "molecule",
        "seed": 0,
        "data": {"train": MOLECULES_TRAIN, "reference": MOLECULES_TEST, "properties": ["logp"], "limit": 256},
        "molecule": {"max_tokens": 60},
        "model": {"latent_dim": 8, "hidden": 32, "site_dim": 16, "encoder_layers": 1, "decoder_layers": 1,
                  "disc_dim": 16, "disc_layers": 1, "grammar_features": True,
                  "grammar_valence": True},
        "train": {"epochs": 2, "batch_size": 64, "monitor_samples": 16, "device": "cpu", "gan_loss": "hinge",
                  "d_species_grad": True, "penalty_weight": 1.0},
        "generate": {"rounds": 1, "n_per_round": 16},
    }
    return config_from_dict(merge(base, sections))


@contextlib.contextmanager
def campaign_in(work, config_path, overrides=None, out="out"):
    """Run `discover` on a config file (with nested ``overrides``) inside folder ``work`` (its own
    MLflow store and generator cache there) into ``work / out``; yield what the integration tests
    read: work, cfg, summary, uri."""
    from design.config import load_config
    from flows.discover import discover

    old_cwd = os.getcwd()
    old_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(work)
    try:
        cfg = load_config(config_path, overrides)
        summary = discover(cfg.model_dump(mode="json"), str(work / out))
        yield {"work": work, "cfg": cfg, "summary": summary, "uri": f"sqlite:///{work / 'mlflow.db'}"}
    finally:
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def tiny_activity_files(folder, target="gsk3"):
    """A labelled CSV of :data:`TINY_ACTIVITY` (as ``target``) and a 2-member ensemble trained on it
    (seconds): what an ``activity`` section's ``datasets`` and ``models`` point at in tests."""
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import torch
    from rdkit import Chem

    from property_models.activity import ActivityConfig, mol_graph, train_ensemble

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{target}.csv"
    pd.DataFrame(TINY_ACTIVITY, columns=["smiles", target]).to_csv(csv, index=False)
    torch.manual_seed(0)
    cfg = ActivityConfig(target=target, hidden=32, layers=2, members=2, epochs=40, batch_size=8, lr=3e-3)
    graphs = [mol_graph(Chem.MolFromSmiles(s)) for s, _ in TINY_ACTIVITY]
    model = train_ensemble(cfg, graphs, np.array([v for _, v in TINY_ACTIVITY], dtype=float))
    return csv, model.save(folder / f"{target}.pt")

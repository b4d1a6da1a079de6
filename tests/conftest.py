"""Shared test setup: real data from the local mirror, an isolated data cache, a tiny trained generator."""

from __future__ import annotations

import os

import pytest

from testkit import MOLECULES_TEST, TRAIN, tiny_config


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
def selfies_corpus():
    """400 real MOSES test molecules as SELFIES, their vocabulary (with a two-index ring token)
    and its grammar."""
    import pandas as pd

    from design.data.sources import resolve
    from design.domains.molecule.grammar import SelfiesGrammar
    from design.domains.molecule.tokens import Vocabulary, smiles_to_selfies

    smiles = pd.read_csv(resolve(MOLECULES_TEST), nrows=400)["SMILES"].tolist()
    selfies = [smiles_to_selfies(s) for s in smiles]
    vocab = Vocabulary.fit(selfies + ["[C][C][C][C][C][C][C][C][C][C][C][C][C][C][C][C][C][Ring2][C][C]"])
    return selfies, vocab, SelfiesGrammar(vocab.tokens)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A generator trained for two epochs on 96 crystals (seconds)."""
    from design.data import training_set
    from design.domains import build_domain
    from design.training.trainer import Trainer

    cfg = tiny_config()
    domain = build_domain(cfg)
    ds = training_set(domain, cfg)
    result = Trainer(cfg, domain, ds, tmp_path_factory.mktemp("tiny-gen")).run()
    return result.checkpoint

"""Molecular activity models (property_models/activity.py): data, scaffold split, graphs, ensemble, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from property_models.activity import (
    ATOM_DIM,
    BOND_DIM,
    ActivityConfig,
    ActivityModel,
    metrics,
    mol_graph,
    read_activity,
    scaffold,
    scaffold_split,
    target_spec,
    train_ensemble,
)

from testkit import TINY_ACTIVITY as TINY

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"


def _mols(smiles):
    from rdkit import Chem

    return [Chem.MolFromSmiles(s) for s in smiles]


def test_unknown_target_raises_naming_value_and_choices():
    with pytest.raises(ValueError, match=r"'gsk4'.*bace, gsk3, jnk3"):
        target_spec("gsk4")
    with pytest.raises(ValueError, match="gsk4"):
        read_activity("gsk4")


def test_invalid_smiles_and_labels_are_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "mini.csv"
    path.write_text("smiles,gsk3\nc1ccccc1O,1\nnot_a_smiles,0\nC1CC,0\nCCO,0\nCCN,2\nCCC,\n")
    with caplog.at_level("WARNING"):
        data = read_activity("gsk3", str(path))
    assert data.smiles == ["c1ccccc1O", "CCO"]
    assert data.y.tolist() == [1.0, 0.0]
    assert data.skipped == {"smiles": 2, "label": 2}
    assert "skipped rows" in caplog.text
    bad = tmp_path / "bad.csv"
    bad.write_text("smiles,activity\nCCO,1\n")
    with pytest.raises(ValueError, match="gsk3"):
        read_activity("gsk3", str(bad))


def test_scaffold_split_keeps_each_scaffold_on_one_side_and_is_deterministic():
    smiles = (["c1ccccc1" + s for s in ("C", "O", "N", "CC", "CO", "Cl")]  # benzene scaffold x6
              + ["C1CCNCC1" + s for s in ("C", "O", "CC")]  # piperidine x3
              + ["c1ccc2ccccc2c1C", "c1ccc2ccccc2c1O"]  # naphthalene x2
              + ["c1ccncc1C", "C1CCOC1C", "CCO", "CCCC", "c1ccsc1C"])
    mols = _mols(smiles)
    split = scaffold_split(mols, test_fraction=0.25)
    keys = [scaffold(m) for m in mols]
    train_keys, test_keys = {keys[i] for i in split.train}, {keys[i] for i in split.test}
    assert not train_keys & test_keys
    assert sorted([*split.train, *split.test]) == list(range(len(mols)))
    assert len(split.train) <= 0.75 * len(mols) and len(split.test) > 0
    assert all(i in split.train for i in range(6))  # the largest group goes to train
    # the same split whatever the row order, and from SMILES as from Mols
    perm = np.random.default_rng(0).permutation(len(mols))
    again = scaffold_split([smiles[i] for i in perm], test_fraction=0.25)
    assert sorted(perm[again.train].tolist()) == split.train.tolist()
    # an inner validation part shares no scaffold with what is left of train
    three = scaffold_split(mols, test_fraction=0.25, val_fraction=0.3)
    assert len(three.val) > 0
    assert not {keys[i] for i in three.val} & {keys[i] for i in three.train}
    assert sorted([*three.train, *three.val]) == split.train.tolist()


def test_graphs_of_real_molecules():
    aspirin, caffeine = (mol_graph(m) for m in _mols([ASPIRIN, CAFFEINE]))
    assert aspirin.x.shape == (13, ATOM_DIM) and aspirin.edge_index.shape == (2, 26)
    assert caffeine.x.shape == (14, ATOM_DIM) and caffeine.edge_index.shape == (2, 30)
    assert aspirin.edge_attr.shape == (26, BOND_DIM)
    # one-hot blocks sum to one per atom; aspirin has 6 aromatic atoms, caffeine 9
    assert torch.all(aspirin.x[:, :13].sum(1) == 1)
    aromatic = 13 + 6 + 3
    assert aspirin.x[:, aromatic].sum() == 6 and caffeine.x[:, aromatic].sum() == 9
    assert aspirin.x[:, 0].sum() == 9 and aspirin.x[:, 2].sum() == 4  # 9 C, 4 O


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    smiles = [s for s, _ in TINY]
    y = np.array([v for _, v in TINY], dtype=float)
    cfg = ActivityConfig(target="gsk3", hidden=32, layers=2, members=2, epochs=40, batch_size=8, lr=3e-3)
    graphs = [mol_graph(m) for m in _mols(smiles)]
    return train_ensemble(cfg, graphs, y), smiles, y


def test_ensemble_overfits_a_tiny_set(tiny_model):
    model, smiles, y = tiny_model
    for member in model.info["members"]:
        loss = member["train_loss"]
        assert loss[-1] < 0.3 * loss[0]
    mean, std = model.predict(smiles)
    assert metrics("classification", y, mean)["roc_auc"] == 1.0
    assert np.all((mean >= 0) & (mean <= 1)) and np.all(std >= 0) and std.max() > 0


def test_predict_gives_nan_for_invalid_smiles(tiny_model):
    model, _, _ = tiny_model
    mean, std = model.predict(["CCO", "not_a_smiles", "c1ccccc1O"])
    assert math.isnan(mean[1]) and math.isnan(std[1])
    assert np.isfinite(mean[[0, 2]]).all() and mean[2] > mean[0]


def test_regression_ensemble_predicts_in_label_units():
    smiles = [s for s, _ in TINY]
    y = np.array([5.0 + 3.0 * v for _, v in TINY])
    cfg = ActivityConfig(target="bace", task="regression", hidden=32, layers=2, members=2, epochs=40,
                         batch_size=8, lr=3e-3)
    model = train_ensemble(cfg, [mol_graph(m) for m in _mols(smiles)], y)
    mean, _ = model.predict(smiles)
    assert np.sqrt(np.mean((mean - y) ** 2)) < 0.75  # predicting the mean (6.5) scores 1.5
    assert metrics("regression", y, mean)["spearman"] > 0.8


def test_save_load_round_trip_and_damaged_files(tiny_model, tmp_path):
    model, smiles, _ = tiny_model
    path = model.save(tmp_path / "act.pt")
    loaded = ActivityModel.load(path)
    assert loaded.cfg == model.cfg
    np.testing.assert_array_equal(loaded.predict(smiles)[0], model.predict(smiles)[0])
    np.testing.assert_array_equal(loaded.predict(smiles)[1], model.predict(smiles)[1])

    raw = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable activity model file"):
        ActivityModel.load(cut)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="not an invdes-activity file"):
        ActivityModel.load(other)
    tampered = tmp_path / "tampered.pt"
    blob = torch.load(path, weights_only=True)
    blob["members"][0].pop(next(iter(blob["members"][0])))
    torch.save(blob, tampered)
    with pytest.raises(ValueError, match="damaged"):
        ActivityModel.load(tampered)

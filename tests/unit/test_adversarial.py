"""Attacks, adversarial training and robustness curves (property_models/adversarial.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch import nn
from torch_geometric.data import Batch, Data

from property_models.activity import ActivityConfig, MolGIN, mol_graph, train_ensemble
from property_models.adversarial import (
    AttackConfig,
    Displacements,
    FeatureBox,
    attack,
    curve_area,
)
from property_models.descriptors import DISTANCE_NAMES
from property_models.descriptors import NAMES as DESCRIPTOR_NAMES
from property_models.graphs import structure_graph
from property_models.surrogate import CrystalGraphNet, SurrogateConfig, SurrogateEnsemble, robustness
from property_models.surrogate import train_ensemble as train_surrogate

from testkit import TINY_ACTIVITY as TINY

CUTOFF = 4.0


def _li_cell() -> Structure:
    return Structure(Lattice.from_parameters(4.1, 4.6, 5.2, 84, 97, 101), ["Li", "Li", "O", "Cl"],
                     [[0, 0, 0], [0.5, 0.45, 0.1], [0.3, 0.2, 0.55], [0.7, 0.8, 0.35]])


def _dists_below(g: Data, limit: float) -> np.ndarray:
    d = g.dist.numpy()
    return np.sort(d[d < limit])


def test_displacements_give_the_distances_of_the_displaced_structure():
    s = _li_cell()
    g = structure_graph(s, CUTOFF)
    rng = np.random.default_rng(0)
    shift = rng.normal(size=(len(s), 3))
    shift *= 0.08 / np.linalg.norm(shift, axis=1, keepdims=True)  # every atom moves 0.08 A
    moved = Structure(s.lattice, s.species, s.cart_coords + shift, coords_are_cartesian=True)
    space = Displacements()
    delta = [torch.tensor(shift, dtype=torch.float32), torch.zeros(1, len(DISTANCE_NAMES))]
    applied = space.apply(g, delta)
    margin = CUTOFF - 2 * 0.08  # edges that cannot have crossed the cutoff either way
    np.testing.assert_allclose(_dists_below(applied, margin), _dists_below(structure_graph(moved, CUTOFF), margin),
                               atol=1e-4)
    same = space.apply(g, [torch.ones(len(s), 3) * 0.3, delta[1]])  # a rigid translation changes no distance
    torch.testing.assert_close(same.dist, g.dist, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_crystal_attack_raises_the_loss_within_its_budget(method, real_structures):
    torch.manual_seed(0)
    cfg = SurrogateConfig(targets=["y"], hidden=16, layers=2, members=1, n_rbf=8, cutoff=CUTOFF)
    model = CrystalGraphNet(cfg).eval()
    graphs = [structure_graph(s, CUTOFF) for s in real_structures[:8]]
    model.fit_descriptor_scaling(graphs)
    batch = Batch.from_data_list(graphs)
    batch.y = torch.zeros(len(graphs), 1)

    def loss(b):
        return nn.functional.smooth_l1_loss(model(b), b.y)

    space, eps = Displacements(), 0.1
    delta = attack(loss, batch, space, AttackConfig(method, eps, steps=5))
    with torch.no_grad():
        assert float(loss(space.apply(batch, delta))) > float(loss(batch))
    assert space.size(delta) <= eps + 1e-6
    assert float(delta[0].norm(dim=1).max()) > 0.5 * eps  # the attack used its budget
    assert float(delta[1].abs().max()) <= 2 * eps + 1e-6
    moved = space.apply(batch, delta)
    idx = [DESCRIPTOR_NAMES.index(n) for n in DISTANCE_NAMES]
    others = [i for i in range(len(DESCRIPTOR_NAMES)) if i not in idx]
    torch.testing.assert_close(moved.u[:, others], batch.u[:, others])  # composition, volume, counts stay
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_molecule_attack_raises_the_loss_within_its_budget(method):
    torch.manual_seed(0)
    model = MolGIN(ActivityConfig(hidden=16, layers=2)).eval()
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CCN(CC)CC", "c1ccc2ccccc2c1"]
    from rdkit import Chem

    batch = Batch.from_data_list([mol_graph(Chem.MolFromSmiles(s)) for s in smiles])
    batch.y = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def loss(b):
        return nn.functional.binary_cross_entropy_with_logits(model(b), b.y)

    space, eps = FeatureBox(), 0.1
    delta = attack(loss, batch, space, AttackConfig(method, eps, steps=5))
    with torch.no_grad():
        assert float(loss(space.apply(batch, delta))) > float(loss(batch))
    x = space.apply(batch, delta).x
    assert space.size(delta) <= eps + 1e-6
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # features stay in their range


def test_fgsm_of_a_linear_loss_is_the_signed_gradient():
    w = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    batch = Data(x=torch.full((1, 4), 0.5))
    delta = attack(lambda b: (b.x * w).sum(), batch, FeatureBox(), AttackConfig("fgsm", 0.2))
    torch.testing.assert_close(delta[0], 0.2 * w.sign())
    edge = Data(x=torch.tensor([[1.0, 0.0, 0.95, 0.0]]))  # clipped to [0, 1]
    delta = attack(lambda b: (b.x * w).sum(), edge, FeatureBox(), AttackConfig("fgsm", 0.2))
    torch.testing.assert_close(delta[0], torch.tensor([[0.0, 0.0, 0.05, 0.0]]))
    assert attack(lambda b: (b.x * w).sum(), batch, FeatureBox(), AttackConfig("pgd", 0.0))[0].abs().sum() == 0


def test_curve_area_is_the_mean_over_the_budget_range():
    assert curve_area([0, 0.1, 0.2], [1.0, 0.5, 0.5]) == pytest.approx((0.075 + 0.05) / 0.2)
    assert curve_area([0, 0.2], [0.7, 0.7]) == pytest.approx(0.7)  # an unmovable model keeps its clean metric
    assert curve_area([0], [0.4]) == pytest.approx(0.4)


def test_bad_attack_and_training_settings_are_named():
    with pytest.raises(ValueError, match="'bim'"):
        AttackConfig("bim")
    with pytest.raises(ValueError, match="epsilon"):
        AttackConfig("pgd", -0.1)
    with pytest.raises(ValueError, match="adv_method='bim'"):
        SurrogateConfig(adv_method="bim")
    with pytest.raises(ValueError, match="adv_epsilon"):
        SurrogateConfig(adv_method="fgsm", adv_epsilon=0.0)
    with pytest.raises(ValueError, match="adv_weight"):
        ActivityConfig(adv_method="pgd", adv_weight=1.5)


def test_adversarially_trained_surrogate_fits_saves_and_reports_a_curve(real_structures, tmp_path):
    structures = real_structures[:24]
    y = np.array([[s.volume / len(s)] for s in structures], dtype=np.float32)
    cfg = SurrogateConfig(targets=["vpa"], hidden=16, layers=2, n_rbf=8, members=1, epochs=25, batch_size=8,
                          lr=3e-3, cutoff=CUTOFF, log_target=False, adv_method="pgd", adv_epsilon=0.05, adv_steps=2)
    graphs = [structure_graph(s, CUTOFF) for s in structures]
    ens = train_surrogate(cfg, graphs, y)
    back = SurrogateEnsemble.load(ens.save(tmp_path / "adv.pt"))
    assert back.cfg.adv_method == "pgd" and back.cfg.adv_epsilon == 0.05
    curve = robustness(back, graphs, y[:, 0], [0, 0.05, 0.2], steps=3)
    assert curve["metrics"]["spearman"][0] > 0.8  # it learnt the training set
    assert curve["shift"][0] == 0 and curve["shift"][2] > curve["shift"][1] > 0  # a larger budget moves it more
    assert curve["metrics"]["mae"][2] >= curve["metrics"]["mae"][0]
    clean = back.predict(graphs).mean[:, 0]
    assert curve["metrics"]["mae"][0] == pytest.approx(float(np.abs(clean - y[:, 0]).mean()), rel=1e-4)


def test_advprop_activity_model_keeps_separate_norms_and_learns():
    from rdkit import Chem

    graphs = [mol_graph(Chem.MolFromSmiles(s)) for s, _ in TINY]
    y = np.array([label for _, label in TINY], dtype=float)
    cfg = ActivityConfig(hidden=16, layers=2, members=1, epochs=40, batch_size=8, adv_method="fgsm",
                         adv_epsilon=0.05, adv_separate_norms=True)
    model = train_ensemble(cfg, graphs, y)
    member = model.members[0]
    assert hasattr(member, "adv_norms")
    assert not torch.equal(member.norms[0].running_mean, member.adv_norms[0].running_mean)
    curve = model.robustness(graphs, y, [0, 0.05, 0.1], steps=3)
    assert curve["metrics"]["roc_auc"][0] > 0.9
    assert curve["metrics"]["roc_auc"][2] <= curve["metrics"]["roc_auc"][0]

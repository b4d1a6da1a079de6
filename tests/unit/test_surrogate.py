"""Periodic graphs and the surrogate ensemble (property_models/graphs.py, surrogate.py, barriers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.stats import spearmanr

from property_models.barriers import element_mean_baseline, group_split, metrics
from property_models.graphs import structure_graph
from property_models.surrogate import SurrogateConfig, SurrogateEnsemble, train_ensemble


def test_graph_has_periodic_edges_with_true_distances():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # CsCl-type cell
    g = structure_graph(nacl, cutoff=5.0)
    assert g.z.tolist() == [11, 17]
    d = 5.64 * np.sqrt(3) / 2  # the 8 nearest Na-Cl images
    na_cl = (g.edge_index[0] == 1) & (g.edge_index[1] == 0)
    assert int(na_cl.sum()) == 8 and torch.allclose(g.dist[na_cl], torch.full((8,), d), atol=1e-4)
    na_na = (g.edge_index[0] == 0) & (g.edge_index[1] == 0)
    assert int(na_na.sum()) == 0  # the next Na image is 5.64 A away, beyond the cutoff
    lonely = structure_graph(Structure(Lattice.cubic(10), ["Li"], [[0, 0, 0]]), cutoff=5.0)
    assert lonely.edge_index.tolist() == [[0], [0]] and lonely.dist.tolist() == [5.0]  # no isolated node
    with pytest.raises(ValueError, match="cutoff"):
        structure_graph(nacl, cutoff=0)


@pytest.fixture(scope="module")
def fitted(real_structures):
    structures = real_structures[:30]
    y = np.array([[s.volume / len(s)] for s in structures], dtype=np.float32)  # learnable from geometry
    cfg = SurrogateConfig(targets=["vpa"], hidden=32, layers=2, members=2, epochs=150, patience=150, batch_size=8,
                          lr=3e-3, val_fraction=0.1)
    graphs = [structure_graph(s, cfg.cutoff) for s in structures]
    return cfg, graphs, y, train_ensemble(cfg, graphs, y)


def test_ensemble_fits_a_small_set_and_reports_spread(fitted):
    _, graphs, y, ens = fitted
    pred = ens.predict(graphs)
    assert pred.mean.shape == y.shape == pred.std.shape
    assert spearmanr(pred.mean[:, 0], y[:, 0]).statistic > 0.9
    assert (pred.std >= 0).all() and pred.std.max() > 0  # members disagree somewhere
    assert len(ens.info["members"]) == 2


def test_ensemble_save_load_round_trip(fitted, tmp_path):
    _, graphs, _, ens = fitted
    path = ens.save(tmp_path / "s.pt")
    back = SurrogateEnsemble.load(path)
    a, b = ens.predict(graphs[:5]), back.predict(graphs[:5])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable surrogate"):
        SurrogateEnsemble.load(tmp_path / "bad.pt")


def test_bad_training_input_is_refused(fitted):
    cfg, graphs, y, _ = fitted
    with pytest.raises(ValueError, match="finite"):
        train_ensemble(cfg, graphs, np.where(np.arange(len(y))[:, None] == 0, np.inf, y))
    with pytest.raises(ValueError, match="too few"):
        train_ensemble(cfg, graphs[:3], y[:3])
    with pytest.raises(ValueError, match="members"):
        SurrogateConfig(members=0)


def test_group_split_keeps_formulas_together_and_metrics_can_fail():
    groups = ["A"] * 5 + ["B"] * 3 + [f"F{i}" for i in range(20)]
    train, test = group_split(groups, 0.2, seed=1)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(groups)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    y = np.arange(10, dtype=float)[:, None]
    m = metrics(y, -y, None, ["e"], baseline=y)
    assert m["e_spearman"] == pytest.approx(-1.0) and m["e_baseline_spearman"] == pytest.approx(1.0)
    assert m["e_mae"] == pytest.approx(np.abs(2 * y).mean())


def test_element_mean_baseline():
    li2o = Structure(Lattice.cubic(4.6), ["Li", "Li", "O"], [[0.25] * 3, [0.75] * 3, [0, 0, 0]])
    lif = Structure(Lattice.cubic(4.0), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    naf = Structure(Lattice.cubic(4.6), ["Na", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    base = element_mean_baseline([li2o, lif], np.array([[1.0], [3.0]]), [naf, li2o])
    # NaF: Na unseen, F seen once (3.0); Li2O: Li mean 2.0, O 1.0 -> 1.5
    np.testing.assert_allclose(base[:, 0], [3.0, 1.5])

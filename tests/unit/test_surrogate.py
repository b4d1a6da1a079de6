"""Periodic graphs and the surrogate ensemble (property_models/graphs.py, surrogate.py, barriers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.stats import spearmanr

from property_models.barriers import element_mean_baseline, group_split, metrics
from property_models.descriptors import NAMES as DESCRIPTOR_NAMES
from property_models.graphs import structure_graph
from property_models.surrogate import SurrogateConfig, SurrogateEnsemble, finetune_ensemble, train_ensemble


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
                          lr=3e-3, val_fraction=0.1, cutoff=5.0, descriptors=False, log_target=False,
                          element_features=False)  # the first model: graph only, early stopping
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


def test_li_environment_descriptors_of_li2o():
    from property_models.descriptors import NAMES, li_environment

    a = 4.62  # antifluorite Li2O: Li in O tetrahedra at a*sqrt(3)/4, Li-Li a/2
    frac_li = [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
    frac_o = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    li2o = Structure(Lattice.cubic(a), ["Li"] * 8 + ["O"] * 4, frac_li + frac_o)
    d = dict(zip(NAMES, li_environment(li2o), strict=True))
    assert d["li_anion_dist_min"] == pytest.approx(a * np.sqrt(3) / 4, abs=1e-3)
    assert d["li_li_dist_min"] == pytest.approx(a / 2, abs=1e-3)
    assert d["li_anion_cn_mean"] == 4 and d["anion_z"] == 8 and d["n_elements"] == 2
    assert d["li_fraction"] == pytest.approx(2 / 3) and d["volume_per_anion"] == pytest.approx(a**3 / 4, rel=1e-4)
    assert d["li_cation_dist_mean"] == 6.0  # no framework cation within the radius
    assert structure_graph(li2o, 4.0).u.shape == (1, len(NAMES))
    no_li = li_environment(Structure(Lattice.cubic(4.0), ["Na", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert no_li[0] == 0 and np.isfinite(no_li).all()


@pytest.fixture(scope="module")
def fitted_physics(real_structures):
    """Descriptors in the readout, log target, fixed epochs (no inner validation)."""
    structures = real_structures[:30]
    y = np.array([[s.volume / len(s)] for s in structures], dtype=np.float32)
    cfg = SurrogateConfig(targets=["vpa"], hidden=32, layers=2, members=2, epochs=60, batch_size=8, lr=3e-3,
                          val_fraction=0.0, descriptors=True, log_target=True, element_features=True)
    graphs = [structure_graph(s, cfg.cutoff) for s in structures]
    return cfg, graphs, y, train_ensemble(cfg, graphs, y)


def test_descriptor_log_target_ensemble_fits_and_predicts_physical_units(fitted_physics, tmp_path):
    cfg, graphs, y, ens = fitted_physics
    pred = ens.predict(graphs)
    assert spearmanr(pred.mean[:, 0], y[:, 0]).statistic > 0.9
    assert np.abs(pred.mean - y).mean() < 0.25 * y.mean()  # physical units, not log units
    assert all(st["epochs_run"] == cfg.epochs and st["val_loss"] is None for st in ens.info["members"])
    member = ens.members[0]
    assert member.u_mean.shape == (15,) and float(member.u_std.min()) > 0  # fitted descriptor scaling
    back = SurrogateEnsemble.load(ens.save(tmp_path / "p.pt"))
    np.testing.assert_allclose(back.predict(graphs[:4]).mean, ens.predict(graphs[:4]).mean, rtol=1e-5)
    with pytest.raises(ValueError, match="log_target needs positive targets"):
        train_ensemble(cfg, graphs, -y)
    absurd = graphs[0].clone()
    absurd.u = torch.full_like(absurd.u, 1e9)  # far outside anything trained on (a generated crystal can be)
    far = ens.predict([absurd])
    assert np.isfinite(far.mean).all() and np.isfinite(far.std).all()


def test_files_from_before_the_physics_options_still_load(fitted, tmp_path):
    _, graphs, _, ens = fitted
    path = ens.save(tmp_path / "old.pt")
    blob = torch.load(path, weights_only=True)
    for key in ("descriptors", "log_target", "element_features"):
        del blob["config"][key]
    torch.save(blob, path)
    back = SurrogateEnsemble.load(path)
    assert not back.cfg.descriptors and not back.cfg.log_target and not back.cfg.element_features
    np.testing.assert_allclose(back.predict(graphs[:3]).mean, ens.predict(graphs[:3]).mean, rtol=1e-5)


def test_repeated_split_evaluation_reports_each_split_and_baselines(real_structures, tmp_path):
    import pandas as pd

    from property_models.barriers import train_and_evaluate

    structures = real_structures[:40]
    from property_models.labels import COLUMNS

    rows = [{"source": "x", "id": f"m{i}", "formula": s.composition.reduced_formula, "ok": True,
             "e_3d": s.volume / len(s) / 10, "cif": s.to(fmt="cif")} for i, s in enumerate(structures)]
    table = pd.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    labels = tmp_path / "labels.csv"
    table.to_csv(labels, index=False)
    cfg = SurrogateConfig(hidden=16, layers=1, n_rbf=8, cutoff=4.0, members=1, epochs=3, val_fraction=0.0,
                          descriptors=True, log_target=True)
    _, res = train_and_evaluate(labels, cfg, 0.25, tmp_path / "s.pt", splits=2)
    assert res["splits"] == 2 and [r["seed"] for r in res["per_split"]] == [0, 1]
    assert res["e_3d_spearman"] == pytest.approx(np.mean([r["e_3d_spearman"] for r in res["per_split"]]))
    for key in ("e_3d_spearman_sd", "e_3d_baseline_spearman", "e_3d_spearman_forest", "e_3d_mae_forest"):
        assert np.isfinite(res[key]), key
    saved = SurrogateEnsemble.load(tmp_path / "s.pt")
    assert saved.info["evaluation"]["first_split"]["seed"] == 0
    with pytest.raises(ValueError, match="splits"):
        train_and_evaluate(labels, cfg, 0.25, None, splits=0)


def test_element_table_orders_elements_physically():
    from property_models.descriptors import ELEMENT_FEATURES, element_table

    t = element_table()
    assert t.shape == (100, len(ELEMENT_FEATURES)) and np.isfinite(t).all()
    x = ELEMENT_FEATURES.index("electronegativity")
    assert t[9, x] > t[8, x] > t[3, x]  # F > O > Li
    assert np.abs(t[1:].mean(0)).max() < 0.2  # standardised over the elements


def test_forest_arrays_predict_exactly_like_scikit_learn():
    from sklearn.ensemble import RandomForestRegressor

    from property_models.forest import ForestArrays

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = x[:, 0] ** 2 + np.sin(x[:, 1])
    forest = ForestArrays.fit(x, y, trees=20, seed=3)
    reference = RandomForestRegressor(n_estimators=20, min_samples_leaf=2, max_features=0.33, random_state=3).fit(x, y)
    x_new = rng.normal(size=(50, 6)).astype(np.float32)
    mean, spread = forest.predict(x_new)
    np.testing.assert_allclose(mean, reference.predict(x_new), rtol=0, atol=1e-12)
    assert (spread >= 0).all() and spread.max() > 0
    back = ForestArrays.from_state(forest.state())
    np.testing.assert_array_equal(back.predict(x_new)[0], mean)
    with pytest.raises(ValueError, match="damaged"):
        ForestArrays.from_state({k: v for k, v in forest.state().items() if k != "roots"})


def test_forest_blend_is_the_weighted_geometric_mean_and_survives_save_load(real_structures, tmp_path):
    from property_models.surrogate import predict_forests, robustness

    structures = real_structures[:30]
    y = np.array([[s.volume / len(s)] for s in structures], dtype=np.float32)
    cfg = SurrogateConfig(targets=["vpa"], hidden=16, layers=1, n_rbf=8, members=2, epochs=3, forest_weight=0.25,
                          forest_trees=20)
    graphs = [structure_graph(s, cfg.cutoff) for s in structures]
    ens = train_ensemble(cfg, graphs, y)
    plain = SurrogateEnsemble(SurrogateConfig(**{**vars(cfg), "forest_weight": 0.0}), ens.members, ens.mean, ens.std)
    members, forest = plain.predict(graphs).mean, predict_forests(cfg, ens.forests, graphs)
    np.testing.assert_allclose(ens.predict(graphs).mean, members ** 0.75 * forest ** 0.25, rtol=1e-5)
    back = SurrogateEnsemble.load(ens.save(tmp_path / "blend.pt"))
    np.testing.assert_allclose(back.predict(graphs).mean, ens.predict(graphs).mean, rtol=1e-6)
    assert back.forest_data[0].shape == (30, len(DESCRIPTOR_NAMES))
    tuned = finetune_ensemble(back, graphs[:10] + graphs[:5], np.concatenate([y[:10] * 2, y[:5]]), epochs=1)
    assert len(tuned.forest_data[0]) == 40  # 30 kept + 10 new rows; the 5 repeated (replayed) rows once
    with pytest.raises(ValueError, match="differentiable"):
        robustness(back, graphs, y[:, 0], [0, 0.1])
    with pytest.raises(ValueError, match="descriptors"):
        SurrogateConfig(forest_weight=0.5, descriptors=False)

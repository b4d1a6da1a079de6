"""The closed loop's property-model steps (property_models/campaign.py) on hand-made tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from property_models.campaign import electrolyte_property_table, hit_threshold, verification_metrics
from property_models.graphs import structure_graph
from property_models.surrogate import SurrogateConfig, finetune_ensemble, train_ensemble

from testkit import TRAIN


def _labels(tmp_path, rows):
    from property_models.labels import COLUMNS

    df = pd.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    path = tmp_path / "labels.csv"
    df.to_csv(path, index=False)
    (tmp_path / "labels.provenance.json").write_text(json.dumps({"oracle": {"encut": 4.0}}))
    return path


def test_property_table_and_threshold_from_labels(tmp_path):
    from design.data.sources import resolve

    train = pd.read_csv(resolve(TRAIN), usecols=["material_id", "cif"])
    li = train[train["cif"].str.contains(r"_chemical_formula_sum\s+['\"]?[^\n]*\bLi\d", regex=True)]
    a, b, c = li["material_id"].iloc[:3]
    labels = _labels(tmp_path, [
        {"source": TRAIN, "id": a, "e_3d": 0.5, "ok": True},
        {"source": TRAIN, "id": b, "e_3d": math.inf, "ok": True},  # no path below encut: censored at 4
        {"source": TRAIN, "id": c, "e_3d": math.nan, "ok": False},  # oracle failure: no row
        {"source": "other.csv", "id": "x", "e_3d": 0.1, "ok": True},  # another split: ignored
    ])
    counts = electrolyte_property_table(TRAIN, labels, tmp_path / "table.csv")
    table = pd.read_csv(tmp_path / "table.csv").set_index("material_id")["e_3d"]
    assert counts["labelled"] == 2 and counts["cap"] == 4.0
    assert table[a] == 0.5 and table[b] == 4.0 and c not in table.index
    without_li = train.loc[~train["material_id"].isin(li["material_id"]), "material_id"]
    assert (table[without_li] == 4.0).all() and len(table) == len(without_li) + 2
    assert hit_threshold(labels, TRAIN, "e_3d", 0.5) == pytest.approx(2.25)  # median of 0.5 and 4.0
    with pytest.raises(ValueError, match="no labelled structures"):
        hit_threshold(labels, "crystals/mpts_52/val.csv.gz", "e_3d", 0.1)


def test_verification_metrics_count_failures_as_misses():
    ver = pd.DataFrame({"sur_e_3d": [0.2, 0.5, 0.9, 0.3], "chgnet_excess_percentile": [0.2, 0.4, np.nan, 0.9]})
    truth = np.array([0.3, 0.1, 2.0, np.nan])  # the last one: oracle failure
    m = verification_metrics(ver, truth, "sur_e_3d", threshold=0.35)
    assert (m["verified"], m["oracle_ok"], m["hits"]) == (4, 3, 2)
    assert m["hit_rate"] == pytest.approx(0.5) and m["best_verified"] == pytest.approx(0.1)
    assert m["surrogate_mae"] == pytest.approx((0.1 + 0.4 + 1.1) / 3)
    assert m["median_excess_percentile"] == pytest.approx(0.4)


def test_finetuning_moves_predictions_toward_new_labels(real_structures):
    structures = real_structures[:12]
    cfg = SurrogateConfig(targets=["t"], hidden=16, layers=1, n_rbf=8, cutoff=4.0, members=2, epochs=5, patience=5,
                          batch_size=12)
    graphs = [structure_graph(s, cfg.cutoff) for s in structures]
    y = np.array([[s.volume / len(s)] for s in structures], dtype=np.float32)
    ens = train_ensemble(cfg, graphs, y)
    new = y + 5.0  # every label shifted: fine-tuning must follow
    before = np.abs(ens.predict(graphs).mean - new).mean()
    tuned = finetune_ensemble(ens, graphs, new, epochs=40, lr_factor=4.0)
    after = np.abs(tuned.predict(graphs).mean - new).mean()
    assert after < 0.5 * before
    assert torch.equal(tuned.mean, ens.mean) and len(tuned.info["finetuned"]) == 1
    # the original ensemble is untouched
    assert np.abs(ens.predict(graphs).mean - new).mean() == pytest.approx(before)
    with pytest.raises(ValueError, match="finite"):
        finetune_ensemble(ens, graphs, np.full_like(y, np.inf), epochs=1)


def test_eligibility_screen_keeps_rank_order_and_skips_what_the_oracle_cannot_evaluate():
    from pymatgen.core import Lattice, Structure
    from pymatgen.util.testing import MatSciTest

    from design.config import config_from_dict
    from property_models.campaign import eligible_head, valences_assignable

    li2o = MatSciTest.get_structure("Li2O")
    li3mg = Structure(Lattice.cubic(4.2), ["Li", "Li", "Li", "Mg"],
                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])  # intermetallic: no valences
    assert valences_assignable(li2o) and not valences_assignable(li3mg)
    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "structure": [s.to(fmt="cif") for s in (li3mg, li2o, li3mg, li2o)]})
    cfg = config_from_dict({"surrogate": {}, "verify": {}})
    head, counts = eligible_head(cfg, table, 2)
    assert head["id"].tolist() == ["b", "d"] and counts == {"screened": 4, "eligible": 2, "skipped_valences": 2}
    head, counts = eligible_head(cfg, table, 1)
    assert head["id"].tolist() == ["b"] and counts == {"screened": 2, "eligible": 1, "skipped_valences": 1}
    off = config_from_dict({"surrogate": {}, "verify": {"require_valences": False}})
    assert eligible_head(off, table, 2)[0]["id"].tolist() == ["a", "b"]

    class Oracle:  # evaluates every other structure it is asked about
        def __init__(self):
            self.asked = 0

        def evaluate(self, structures, label="", every=1):
            from types import SimpleNamespace

            out = [SimpleNamespace(ok=(self.asked + i) % 2 == 1, failure=None if (self.asked + i) % 2 else "parameters")
                   for i in range(len(structures))]
            self.asked += len(structures)
            return out

    both = pd.concat([table, table.assign(id=["e", "f", "g", "h"])], ignore_index=True)  # b d f h pass valences
    head, counts = eligible_head(cfg, both, 2, Oracle())  # the oracle fails b and f, evaluates d and h
    assert head["id"].tolist() == ["d", "h"]
    assert counts == {"screened": 8, "eligible": 2, "skipped_valences": 4, "skipped_parameters": 2}
    no_oracle = config_from_dict({"surrogate": {}, "verify": {"require_evaluable": False}})
    assert eligible_head(no_oracle, both, 2, Oracle())[0]["id"].tolist() == ["b", "d"]

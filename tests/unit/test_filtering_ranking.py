import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from design.config import RankConfig
from design.domains.base import Candidate
from design.domains.crystal import CrystalDomain
from design.generation.filtering import ReferenceIndex, annotate, select
from design.generation.ranking import rank_table


def rock_salt(a=5.64, cation="Na"):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_unique_and_novel_flags():
    dom = CrystalDomain()
    train = ReferenceIndex.build(dom, [rock_salt(cation="K")])
    cands = [
        Candidate("a", rock_salt()),
        Candidate("b", rock_salt(5.70).get_primitive_structure()),  # same structure, other cell: duplicate
        Candidate("c", rock_salt(cation="K")),  # in the training set: not novel
        Candidate("d", Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])),  # invalid
    ]
    counts = annotate(cands, dom, train)
    assert (counts.generated, counts.valid, counts.unique, counts.novel) == (4, 3, 2, 1)
    assert [c.scores["unique"] for c in cands] == [1.0, 0.0, 1.0, 0.0]
    assert [c.scores["novel"] for c in cands] == [1.0, 0.0, 0.0, 0.0]
    assert counts.rates()["uniqueness"] == pytest.approx(2 / 3)
    assert [c.id for c in select(cands, True, True, True)] == ["a"]
    assert [c.id for c in select(cands, True, False, False)] == ["a", "b", "c"]


def test_seen_index_carries_across_rounds():
    dom = CrystalDomain()
    seen = ReferenceIndex(dom)
    annotate([Candidate("r0", rock_salt())], dom, None, seen)
    later = [Candidate("r1", rock_salt(5.5))]
    counts = annotate(later, dom, None, seen)
    assert counts.unique == 0


def test_ranking_hand_computed():
    table = pd.DataFrame(
        {"id": ["a", "b", "c"], "realism": [0.9, 0.5, 0.1], "penalty": [0.0, 0.0, 0.0],
         "pred_formation_energy_per_atom": [-1.0, -3.0, -2.0]}
    )
    cfg = RankConfig(realism_weight=1.0, penalty_weight=1.0,
                     property_weights={"formation_energy_per_atom": 1.0},
                     property_goals={"formation_energy_per_atom": "minimize"})
    ranked = rank_table(table, cfg)
    # z(realism) = [1.2247, 0, -1.2247]; -z(energy) = [-1.2247, 1.2247, 0]; penalty has no spread
    assert ranked["id"].tolist() == ["b", "a", "c"]
    assert ranked["score"].tolist() == pytest.approx([1.224745, 0.0, -1.224745], abs=1e-5)
    assert ranked["rank"].tolist() == [1, 2, 3]


def test_group_cap_moves_a_formula_s_extra_polymorphs_after_the_rest():
    table = pd.DataFrame({"id": list("abcdef"), "realism": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "penalty": [0.0] * 6,
                          "formula": ["LiCl", "LiCl", "LiCl", "Li3N", "LiCl", None]})
    ranked = rank_table(table, RankConfig(max_per_group=2))
    # two LiCl kept in place, the third and fourth after every other formula, in score order
    assert ranked["id"].tolist() == ["a", "b", "d", "f", "c", "e"]
    assert ranked["group_overflow"].tolist() == [False, False, False, False, True, True]
    assert ranked["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert "group_overflow" not in rank_table(table, RankConfig()).columns  # off by default
    assert rank_table(table, RankConfig())["id"].tolist() == list("abcdef")
    with pytest.raises(ValueError, match="'scaffold' is not in the candidate table.*formula"):
        rank_table(table, RankConfig(max_per_group=1, group_by="scaffold"))


def test_ranking_to_a_target():
    table = pd.DataFrame({"id": ["a", "b"], "realism": [0.5, 0.5], "penalty": [0.1, 0.1],
                          "pred_formation_energy_per_atom": [-1.0, -2.1]})
    cfg = RankConfig(property_weights={"formation_energy_per_atom": 1.0},
                     property_goals={"formation_energy_per_atom": "target"})
    assert rank_table(table, cfg, {"formation_energy_per_atom": -2.0})["id"].tolist() == ["b", "a"]


def test_filter_round_survives_a_sample_with_no_atoms(tmp_path):
    """Invalid rows are counted from their stored flags; only rows the filter may keep are parsed back."""
    import json

    from design.generation.loop import filter_round, round_dir
    from design.generation.tables import to_table, write_table

    from testkit import tiny_config

    dom = CrystalDomain()
    cands = [
        Candidate("r00-a", rock_salt(), scores={"realism": 0.5, "penalty": 0.0}),
        Candidate("r00-b", rock_salt(5.7).get_primitive_structure(), scores={"realism": 0.4, "penalty": 0.0}),
        Candidate("r00-c", Structure(Lattice.cubic(3.0), [], []), scores={"realism": 0.1, "penalty": 1.0}),
        Candidate("r00-d", rock_salt(cation="K"), scores={"realism": 0.3, "penalty": 0.0}),
    ]
    for c in cands:
        c.check = dom.check(c.obj)
    write_table(to_table(cands, dom, round_index=0), round_dir(tmp_path, 0) / "generated.csv.gz")
    reference = ReferenceIndex.build(dom, [rock_salt(cation="K")])
    m = filter_round(dom, tiny_config(), 0, tmp_path, reference)
    assert (m["generated"], m["valid_structural"], m["valid"], m["unique"], m["novel"]) == (4, 3, 3, 2, 1)
    accepted = pd.read_csv(round_dir(tmp_path, 0) / "accepted.csv.gz")
    assert accepted["id"].tolist() == ["r00-a"]
    assert json.loads((round_dir(tmp_path, 0) / "counts.json").read_text())["generated"] == 4


def test_uncertain_predictions_rank_below_confident_ones_and_surrogate_columns_are_used():
    table = pd.DataFrame({"id": ["a", "b", "c"], "realism": [0.5] * 3, "penalty": [0.0] * 3,
                          "sur_e_3d": [0.3, 0.3, 0.6], "sur_e_3d_std": [0.5, 0.0, 0.0]})
    cfg = RankConfig(property_weights={"sur_e_3d": 1.0}, property_goals={"sur_e_3d": "minimize"})
    # pessimistic values: a 0.8, b 0.3, c 0.6
    assert rank_table(table, cfg)["id"].tolist() == ["b", "c", "a"]
    blind = RankConfig(property_weights={"sur_e_3d": 1.0}, property_goals={"sur_e_3d": "minimize"},
                       uncertainty_weight=0.0)
    assert rank_table(table, blind)["id"].tolist() == ["a", "b", "c"]  # tie a/b broken by id
    with pytest.raises(ValueError, match="no column 'e_3d' or 'pred_e_3d'"):
        rank_table(table, RankConfig(property_weights={"e_3d": 1.0}))


def test_pareto_front_hand_computed():
    from design.generation.ranking import pareto_front

    t = pd.DataFrame({"x": [1.0, 2.0, 1.0, 3.0, float("nan")], "y": [3.0, 2.0, 3.0, 1.0, float("nan")]})
    # minimise x, maximise y: (1,3) twice (ties dominate nothing), (2,2) and (3,1) are dominated
    assert pareto_front(t, {"x": "minimize", "y": "maximize"}).tolist() == [True, False, True, False, False]
    # minimise both: (1,3), (2,2), (3,1) are a trade-off front; NaN is worst in either sense
    assert pareto_front(t, {"x": "minimize", "y": "minimize"}).tolist() == [True, True, True, True, False]


def test_pareto_front_is_the_pairwise_definition():
    """On random tables with ties, repeated rows and NaN: the rows no other row dominates, as the
    N x N comparison finds them."""
    from design.generation.ranking import pareto_front

    rng = np.random.default_rng(0)
    for trial in range(30):
        n, k = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        x = rng.integers(0, 6, size=(n, k)).astype(float)  # few values: many ties and repeats
        x[rng.random((n, k)) < 0.05] = np.nan
        goals = {f"c{j}": ("minimize" if rng.random() < 0.5 else "maximize") for j in range(k)}
        t = pd.DataFrame(x, columns=list(goals))
        low = np.stack([np.where(np.isnan(x[:, j]), np.inf, x[:, j] if g == "minimize" else -x[:, j])
                        for j, g in enumerate(goals.values())], axis=1)
        dominated = ((low[None] <= low[:, None]).all(2) & (low[None] < low[:, None]).any(2)).any(1)
        assert pareto_front(t, goals).tolist() == (~dominated).tolist(), trial


def test_contains_filter_is_by_element():
    dom = CrystalDomain()
    assert dom.contains(rock_salt(cation="Li"), "Li") and not dom.contains(rock_salt(), "Li")

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


def test_ranking_to_a_target():
    table = pd.DataFrame({"id": ["a", "b"], "realism": [0.5, 0.5], "penalty": [0.1, 0.1],
                          "pred_formation_energy_per_atom": [-1.0, -2.1]})
    cfg = RankConfig(property_weights={"formation_energy_per_atom": 1.0},
                     property_goals={"formation_energy_per_atom": "target"})
    assert rank_table(table, cfg, {"formation_energy_per_atom": -2.0})["id"].tolist() == ["b", "a"]

"""The BVSE oracle (property_models/bvse.py) and its labels table (property_models/labels.py)."""

from __future__ import annotations

import math
import tarfile

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.util.testing import MatSciTest

from property_models.bvse import (
    BVSEOracle,
    BVSESettings,
    OracleResult,
    compute_barriers,
    structure_key,
    summarize,
)
from property_models.labels import collect, label_rows, provenance_path, read_labels, write_labels


@pytest.fixture(scope="module")
def known():
    li3mg = Structure(Lattice.cubic(4.2), ["Li", "Li", "Li", "Mg"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return {
        "Li2O": MatSciTest.get_structure("Li2O"),
        "LiFePO4": MatSciTest.get_structure("LiFePO4"),
        "CsCl": MatSciTest.get_structure("CsCl"),
        "Li3Mg": li3mg,  # an intermetallic: no bond-valence oxidation states
    }


@pytest.fixture(scope="module")
def evaluated(known, tmp_path_factory):
    cache = tmp_path_factory.mktemp("bvse-cache")
    oracle = BVSEOracle(cache, BVSESettings(time_limit_s=120), workers=2)
    return cache, oracle.evaluate(list(known.values()))


def test_known_structures_give_finite_barriers_and_failures_are_recorded(known, evaluated):
    _, res = evaluated
    by = dict(zip(known, res, strict=True))
    for name in ("Li2O", "LiFePO4"):
        r = by[name]
        assert r.ok and r.failure is None, (name, r.message)
        assert math.isfinite(r.e_1d) and 0 < r.e_1d <= r.e_2d <= r.e_3d, name  # a 3D path needs a 1D one
    # antifluorite Li2O conducts in 3D at its 1D barrier; olivine LiFePO4 is a 1D conductor
    assert by["Li2O"].e_3d == pytest.approx(by["Li2O"].e_1d)
    assert by["LiFePO4"].e_1d < 1.0 < by["LiFePO4"].e_3d
    assert (by["CsCl"].ok, by["CsCl"].failure) == (False, "no_mobile_ion")
    assert (by["Li3Mg"].ok, by["Li3Mg"].failure) == (False, "valences")
    assert summarize(res)["failures"] == {"no_mobile_ion": 1, "valences": 1}


def test_results_come_back_from_the_cache(known, evaluated):
    cache, first = evaluated
    again = BVSEOracle(cache, BVSESettings(time_limit_s=120)).evaluate(list(known.values()))
    assert all(r.cached for r in again)
    assert [r.to_json() for r in again] == [r.to_json() for r in first]
    # the settings that define a result are part of the key; the time limit is not
    s = known["Li2O"]
    assert structure_key(s, BVSESettings()) == structure_key(s, BVSESettings(time_limit_s=5))
    assert structure_key(s, BVSESettings()) != structure_key(s, BVSESettings(resolution=0.3))
    moved = s.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert structure_key(moved, BVSESettings()) != structure_key(s, BVSESettings())


def test_timeout_is_a_recorded_failure_and_a_larger_limit_retries(known, tmp_path):
    fast = BVSEOracle(tmp_path, BVSESettings(time_limit_s=0.05))
    (r,) = fast.evaluate([known["LiFePO4"]])
    assert (r.ok, r.failure, r.time_limit_s) == (False, "timeout", 0.05)
    assert fast.evaluate([known["LiFePO4"]])[0].cached  # the same limit does not retry
    assert BVSEOracle(tmp_path, BVSESettings(time_limit_s=120)).cached(r.key) is None


def test_in_process_failures_and_settings_errors(known):
    from property_models.bvse import OracleFailure

    with pytest.raises(OracleFailure, match="no_mobile_ion"):
        compute_barriers(known["CsCl"], BVSESettings())
    disordered = known["Li2O"].copy()
    disordered.replace(0, {"O": 0.5, "S": 0.5})
    with pytest.raises(OracleFailure, match="disordered"):
        compute_barriers(disordered, BVSESettings())
    with pytest.raises(ValueError, match="resolution=0.01"):
        BVSESettings(resolution=0.01)
    with pytest.raises(ValueError, match="workers must be"):
        BVSEOracle("unused", workers=0)


def test_damaged_cache_entry_is_recomputed(known, tmp_path):
    oracle = BVSEOracle(tmp_path, BVSESettings())
    key = structure_key(known["CsCl"], oracle.settings)
    path = tmp_path / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    (r,) = oracle.evaluate([known["CsCl"]])
    assert r.failure == "no_mobile_ion" and not r.cached
    assert OracleResult.from_json(path.read_text()).failure == "no_mobile_ion"


def test_sources_are_filtered_and_the_table_round_trips(known, tmp_path, monkeypatch):
    monkeypatch.setenv("INVDES_DATA_MIRROR", str(tmp_path))
    big = known["Li2O"].copy()
    big.make_supercell([3, 3, 3])  # 81 sites
    rows = [("a", known["Li2O"]), ("b", known["CsCl"]), ("c", big), ("d", None)]
    csv = pd.DataFrame({"material_id": [r[0] for r in rows],
                        "cif": [s.to(fmt="cif") if s else "data_broken\n_chemical_formula_sum 'Li1'" for _, s in rows]})
    csv.to_csv(tmp_path / "set.csv", index=False)
    entries, skipped = collect("set.csv", "Li", max_sites=20)
    assert [e.id for e in entries] == ["a"]
    assert skipped == {"unparsable": 1, "too_many_sites": 1, "without_element": 1}
    with tarfile.open(tmp_path / "cifs.tar.gz", "w:gz") as tar:
        for name, s in (("x1", known["LiFePO4"]), ("x2", known["CsCl"])):
            (tmp_path / f"{name}.cif").write_text(s.to(fmt="cif"))
            tar.add(tmp_path / f"{name}.cif", arcname=f"cifs/{name}.cif")
    tar_entries, tar_skipped = collect("cifs.tar.gz", "Li")
    assert [e.id for e in tar_entries] == ["x1"] and tar_skipped["without_element"] == 1
    with pytest.raises(ValueError, match="neither"):
        collect("set.parquet")

    results = [OracleResult("k1", True, 0.3, 0.3, 0.3, seconds=1.0), OracleResult("k2", True, 0.4, 3.3, math.inf)]
    table = label_rows(entries + tar_entries, results)
    out = write_labels(table, {"counts": {"rows": 2}}, tmp_path / "labels" / "bvse.csv.gz")
    back = read_labels(out)
    assert back["e_3d"].tolist() == [0.3, math.inf] and back["failure"].tolist() == ["", ""]
    assert Structure.from_str(back["cif"][1], fmt="cif").composition.reduced_formula == "LiFePO4"
    assert provenance_path(out).name == "bvse.provenance.json" and provenance_path(out).exists()

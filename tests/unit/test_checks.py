import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from design.domains.crystal.checks import check, compositional_reason, structural_reason


def test_rock_salt_valid():
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    report = check(s)
    assert report.valid and report.reasons == ()


def test_close_atoms_structurally_invalid():
    s = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    assert "0.30 A apart" in structural_reason(s)
    assert not check(s).structural


def test_tiny_volume_and_self_overlap_invalid():
    assert "volume" in structural_reason(Structure(Lattice.cubic(0.3), ["Na"], [[0, 0, 0]]))
    thin = Structure(Lattice.from_parameters(0.4, 5, 5, 90, 90, 90), ["Na"], [[0, 0, 0]])
    assert "overlaps its image" in structural_reason(thin)


def test_compositional_validity_smact():
    assert compositional_reason(Composition("NaCl")) is None
    assert compositional_reason(Composition("Fe2O3")) is None
    assert compositional_reason(Composition("Cu3Au")) is None  # all metals: an alloy
    assert compositional_reason(Composition("Si")) is None  # one element
    assert "charge-balanced" in compositional_reason(Composition("NaCl4"))
    assert "elements" in compositional_reason(Composition("LiNaKRbCsMgCaSrBa"), max_elements=8)


def test_fast_smact_test_agrees_with_smact():
    """smact_valid_counts must decide exactly what SMACT's smact_validity decides."""
    import random

    from smact.screening import smact_validity

    from design.domains.crystal.checks import smact_valid_counts
    from design.domains.crystal.elements import symbol

    rng = random.Random(7)
    common = [1, 3, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 20, 22, 25, 26, 29, 30, 34, 35, 38, 42, 50, 53, 56, 57, 83]
    formulas = ["NaCl", "Fe3O4", "Fe2O3", "LiFePO4", "Cu3Au", "NaCl4", "XeF2", "HeO", "Li2O2", "CsAu", "Mn3N7"]
    comps = [Composition(f) for f in formulas]
    for _ in range(600):
        pool = common if rng.random() < 0.6 else range(1, 95)
        zs = rng.sample(list(pool), rng.choice([2, 3, 4]))
        comps.append(Composition({symbol(z): rng.randint(1, 8) for z in zs}))
    agree = [
        smact_validity(c, oxidation_states_set="smact14")
        == smact_valid_counts(tuple((e.Z, int(v)) for e, v in c.items()))
        for c in comps
    ]
    assert all(agree), [c.formula for c, ok in zip(comps, agree, strict=True) if not ok]
    # both outcomes are exercised
    outcomes = {smact_valid_counts(tuple((e.Z, int(v)) for e, v in c.items())) for c in comps}
    assert outcomes == {True, False}


# -- the vectorised structural check against the pymatgen reference

def _structural_agree(structures, unproven=()):
    """Assert the fast structural check equals the pymatgen reference and that the vectorised
    geometry alone decides every valid structure but those at indices ``unproven`` (pymatgen only
    explains the invalid ones); return the reference reasons."""
    from design.domains.crystal.checks import proven_valid, reference_structural_reason, structural_reasons

    ref = [reference_structural_reason(s) for s in structures]
    assert structural_reasons(structures) == ref
    assert [structural_reason(s) for s in structures] == ref
    expected = [r is None and i not in unproven for i, r in enumerate(ref)]
    assert proven_valid(structures).tolist() == expected
    return ref


@pytest.fixture(scope="module")
def test_split_structures():
    """300 crystals of the mp_20_biternary test split through the project's loader (canonical cells)."""
    from design.domains.crystal import CrystalDomain

    dom = CrystalDomain()
    return dom.decode(dom.load_dataset("crystals/mp_20_biternary/test.csv.gz", [], limit=300).tensors)


def test_fast_structural_check_equals_pymatgen_on_real_crystals(test_split_structures, real_structures):
    ref = _structural_agree(test_split_structures + real_structures)
    assert all(r is None for r in ref)  # real crystals are valid


def test_fast_structural_check_equals_pymatgen_on_perturbed_crystals(test_split_structures, monkeypatch):
    """Real cells with a site moved 0.3-0.7 A from another one (often across the cell boundary), and
    real cells shrunk until their closest pair is near 0.5 A: both verdicts on each side (computed
    in small chunks)."""
    monkeypatch.setattr("design.domains.crystal.checks.PROOF_CHUNK", 100)
    rng = np.random.default_rng(0)
    perturbed = []
    for s in test_split_structures[:150]:
        if len(s) < 2:
            continue
        moved = s.copy()
        direction = rng.normal(size=3)
        target = s[0].coords + direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.7)
        moved.replace(1, moved[1].species, target, coords_are_cartesian=True, properties=None)
        perturbed.append(moved)
        dmin = min(float(np.min(s.distance_matrix + np.eye(len(s)) * 1e3)), min(s.lattice.abc))
        shrunk = s.copy()
        shrunk.scale_lattice(s.volume * (rng.uniform(0.4, 0.6) / dmin) ** 3)
        perturbed.append(shrunk)
    ref = _structural_agree(perturbed)
    assert 50 < sum(r is None for r in ref) < len(ref) - 50
    assert any("apart" in r for r in ref if r)


def test_fast_structural_check_edge_cases():
    from design.domains.crystal.checks import image_shells

    def pair(gap):  # two atoms ``gap`` A apart across the periodic boundary of a 5 A cube
        return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.0, 0.3, 0.3], [1 - gap / 5.0, 0.3, 0.3]])

    skew = Lattice([[6.0, 0, 0], [5.7, 0.8, 0], [0, 0, 6.0]])  # widths 0.83 and 0.80 A, a 64 degree cell
    short = np.array([np.cos(1.1), np.sin(1.1), 0.0])  # a direction whose wrapped fraction is far off
    thin = Lattice([[10.0, 0, 0], [0, 10.0, 0], [3.3, 4.1, 0.1]])  # 0.1 A wide: beyond the image shells
    cases = {
        "0.49 across boundary": pair(0.49),
        "0.51 across boundary": pair(0.51),
        "skewed 0.45": Structure(skew, ["Na", "Cl"], [[0, 0, 3.0], short * 0.45 + [0, 0, 3.0]],
                                 coords_are_cartesian=True),
        "skewed 0.55": Structure(skew, ["Na", "Cl"], [[0, 0, 3.0], short * 0.55 + [0, 0, 3.0]],
                                 coords_are_cartesian=True),
        # a long given basis whose reduced basis has a 0.45 A vector: a site overlaps its image
        "self image 0.45": Structure(Lattice([[5.0, 0, 0], [5.27, 0.36, 0], [0, 0, 6]]), ["Na"], [[0, 0, 0]]),
        "self image 0.55": Structure(Lattice([[5.0, 0, 0], [5.33, 0.44, 0], [0, 0, 6]]), ["Na"], [[0, 0, 0]]),
        "tiny cell 0.48": Structure(Lattice.cubic(0.48), ["Na"], [[0, 0, 0]]),  # 0.11 A^3
        "tiny cell 0.52": Structure(Lattice.cubic(0.52), ["Na"], [[0.5, 0.5, 0.5]]),
        "thin cell": Structure(thin, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "volume 0.1": Structure(Lattice([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.1]]), ["Na"], [[0, 0, 0]]),
        "nan coordinate": Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]]),
        "one site": Structure(Lattice.cubic(3.0), ["Na"], [[0.2, 0.7, 0.1]]),
        "no sites": Structure(Lattice.cubic(3.0), [], []),
    }
    unproven = {list(cases).index("thin cell"), list(cases).index("nan coordinate")}
    ref = dict(zip(cases, _structural_agree(list(cases.values()), unproven), strict=True))
    assert ref["0.49 across boundary"] == "atoms 0.49 A apart (<= 0.5)"
    assert ref["0.51 across boundary"] is None
    assert ref["skewed 0.45"] == "atoms 0.45 A apart (<= 0.5)" and ref["skewed 0.55"] is None
    assert "overlaps its image" in ref["self image 0.45"] and ref["self image 0.55"] is None
    assert "overlaps its image" in ref["tiny cell 0.48"] and ref["tiny cell 0.52"] is None
    assert "volume" in ref["volume 0.1"] and ref["no sites"] == "no sites" and ref["one site"] is None
    # the skewed pair is closest through an image the plain minimum-image convention misses (5.5 A)
    s = cases["skewed 0.45"]
    d = s[1].frac_coords - s[0].frac_coords
    assert np.linalg.norm((d - np.round(d)) @ skew.matrix) > 5
    assert image_shells(skew.matrix) == (1, 1, 0)
    # a cell too thin for the image shells is left to the reference, which decides it
    assert image_shells(thin.matrix) is None and ref["thin cell"] is None
    # pymatgen's NaN distances compare as not too close: the reference passes a NaN coordinate, and
    # so does the fast check, which leaves non-finite structures to it
    assert ref["nan coordinate"] is None


def test_check_many_equals_check(test_split_structures):
    from design.domains.crystal import CrystalDomain
    from design.domains.crystal.checks import check_many

    structures = test_split_structures[:40] + [
        Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]]),
        Structure(Lattice.cubic(8.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]),
        Structure(Lattice.cubic(3.0), [], []),
    ]
    many = check_many(structures)
    assert many == [check(s) for s in structures]
    assert CrystalDomain(max_elements_smact=8).check_many(structures) == many
    assert check_many([]) == []

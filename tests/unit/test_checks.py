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

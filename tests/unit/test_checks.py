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

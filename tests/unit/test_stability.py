"""The CHGNet stability oracle (property_models/stability.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.util.testing import MatSciTest

from property_models.stability import CHGNetEnergies, StabilityReference


@pytest.fixture(scope="module")
def energies():
    return CHGNetEnergies()


def test_known_structures_have_plausible_energies_and_a_squeezed_cell_does_not(energies, real_structures):
    li2o = MatSciTest.get_structure("Li2O")
    squeezed = li2o.copy()
    squeezed.scale_lattice(li2o.volume * 0.45)  # atoms pushed far closer than any real oxide
    train = real_structures[:60] + [li2o]
    res = energies(train + [squeezed])
    assert all(r.ok for r in res)
    e = [r.energy_per_atom for r in res]
    assert all(math.isfinite(x) and -12 < x < 0 for x in e[:-1])  # bound crystals: negative eV/atom
    ref = StabilityReference.fit(train, e[:-1])
    pct = ref.percentile(ref.excess([li2o, squeezed], [e[len(train) - 1], e[-1]]))
    assert pct[0] < 0.95 and pct[1] >= 0.99  # the squeezed cell is less stable than (almost) every real one


def test_short_relaxation_lowers_the_energy_of_a_strained_cell(energies):
    strained = MatSciTest.get_structure("Li2O")
    strained.scale_lattice(strained.volume * 1.25)
    relaxer = CHGNetEnergies(relax_steps=20)
    (r,) = relaxer([strained])
    assert r.ok and 0 < r.relax_steps <= 20
    assert r.relaxed_energy_per_atom < r.energy_per_atom
    assert r.relaxed is not None and r.relaxed.volume < strained.volume


def test_reference_recovers_additive_energies_and_refuses_unknown_elements():
    a = Structure(Lattice.cubic(3), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    b = Structure(Lattice.cubic(3), ["Li", "Li", "O"], [[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0.5]])
    c = Structure(Lattice.cubic(3), ["Li"], [[0, 0, 0]])
    mu = {"Li": -2.0, "O": -5.0}
    e = [(-2 - 5) / 2, (-4 - 5) / 3, -2.0]
    ref = StabilityReference.fit([a, b, c], e)
    assert ref.mu["Li"] == pytest.approx(-2.0) and ref.mu["O"] == pytest.approx(mu["O"])
    np.testing.assert_allclose(ref.excess_sorted, 0, atol=1e-9)
    f = Structure(Lattice.cubic(3), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert np.isnan(ref.excess([f], [-3.0])[0]) and np.isnan(ref.percentile(np.array([np.nan]))[0])
    with pytest.raises(ValueError, match="at least two"):
        StabilityReference.fit([a], [-3.5])
    with pytest.raises(ValueError, match="relax_steps"):
        CHGNetEnergies(relax_steps=-1)

import math

import pytest
import torch
from ase.data import atomic_masses, covalent_radii
from pymatgen.core import Lattice, Structure

from design.config import PenaltyConfig
from design.domains.crystal import CrystalDomain
from design.domains.crystal.tensors import CrystalBatch


def terms(structures, cfg=None):
    dom = CrystalDomain(max_sites=8, penalty=cfg or PenaltyConfig())
    batch = dom.real_batch(dom.encode(structures))
    return dom.build_penalty().terms(batch)


def rock_salt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rock_salt_is_not_penalised():
    t = terms([rock_salt()])
    assert t["distance"].item() == 0.0
    assert t["charge"].item() == 0.0
    assert t["density"].item() == 0.0
    assert t["density_gcc"].item() == pytest.approx(2.16, abs=0.02)


def test_two_atoms_03_angstrom_apart_hand_value():
    s = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    t = terms([s])
    threshold = 0.6 * (covalent_radii[11] + covalent_radii[17])
    # one clashing pair, counted once, per atom (2 atoms)
    assert t["distance"].item() == pytest.approx((threshold - 0.3) ** 2 / 2, rel=1e-4)


def test_atom_overlapping_its_own_image_is_penalised():
    s = Structure(Lattice.from_parameters(1.0, 8.0, 8.0, 90, 90, 90), ["Si"], [[0, 0, 0]])
    t = terms([s])
    threshold = 0.6 * 2 * covalent_radii[14]
    # the images at +a and -a: two ordered pairs, halved, per atom
    assert t["distance"].item() == pytest.approx((threshold - 1.0) ** 2, rel=1e-4)


def test_charge_interval_hand_value():
    # Cs can reach at most +1, four F at most -4 in total: the interval [sum min, sum max] misses 0 by 3
    s = Structure(Lattice.cubic(8.0), ["Cs", "F", "F", "F", "F"],
                  [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    assert terms([s])["charge"].item() == pytest.approx(3 / 5)


def test_density_hand_value():
    s = Structure(Lattice.cubic(10.0), ["Na"], [[0, 0, 0]])
    rho = atomic_masses[11] / 1000.0 * 1.66053906660
    t = terms([s])
    assert t["density_gcc"].item() == pytest.approx(rho, rel=1e-5)
    assert t["density"].item() == pytest.approx(math.log(0.5 / rho) ** 2, rel=1e-4)


def test_gradient_matches_finite_differences():
    dom = CrystalDomain(max_sites=2)
    pen = dom.build_penalty().double()
    s = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0.01, 0.02]])
    b = dom.real_batch(dom.encode([s]))
    frac = b.frac.double().requires_grad_(True)
    batch = CrystalBatch(b.species.double(), frac, b.lattice.double())
    value = pen(batch).sum()
    (grad,) = torch.autograd.grad(value, frac)
    eps = 1e-6
    for i in range(2):
        for k in range(3):
            plus, minus = frac.detach().clone(), frac.detach().clone()
            plus[0, i, k] += eps
            minus[0, i, k] -= eps
            fd = (pen(CrystalBatch(batch.species, plus, batch.lattice)) - pen(CrystalBatch(batch.species, minus, batch.lattice))) / (2 * eps)
            assert grad[0, i, k].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)
    # pushing the atoms apart lowers the penalty
    assert grad[0, 1, 0] < 0 < grad[0, 0, 0]


def test_penalty_is_zero_on_real_training_crystals(real_structures):
    t = terms([s for s in real_structures if len(s) <= 8])
    assert (t["distance"] == 0).all()
    assert (t["density"] == 0).all()


@pytest.mark.parametrize("moves_cell", [True, False])
def test_distance_gradient_reaches_the_cell_only_when_allowed(moves_cell):
    s = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    dom = CrystalDomain(max_sites=8, penalty=PenaltyConfig(distance_moves_cell=moves_cell))
    real = dom.real_batch(dom.encode([s]))
    frac = real.frac.clone().requires_grad_(True)
    lattice = real.lattice.clone().requires_grad_(True)
    dom.build_penalty().terms(CrystalBatch(real.species, frac, lattice))["distance"].sum().backward()
    assert frac.grad.abs().sum() > 0  # the atoms are pushed apart either way
    moved = lattice.grad is not None and bool(lattice.grad.abs().sum() > 0)
    assert moved == moves_cell

"""Soft-sphere relaxation of sampled crystals (design/domains/crystal/relax.py)."""

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from design.config import GenerateConfig
from design.domains.crystal import CrystalDomain
from design.domains.crystal.relax import relax
from design.domains.crystal.tensors import cell_volume, decode, encode


def _rocksalt(a: float = 5.64) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.get_primitive_structure()


def _heusler() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.8), ["Cu", "Mn", "Al"], [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def _distorted(s: Structure, amount: float, seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    out = s.copy()
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(0, amount, 3), frac_coords=False)
    return out


def test_no_steps_and_empty_batches_change_nothing():
    t = encode([_rocksalt()], 8)
    assert relax(t, 1.2, 0, 0.003) is t
    empty = t.subset(slice(0, 0))
    assert len(relax(empty, 1.2, 10, 0.003)) == 0


def _frac_shift(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest displacement between two site arrays [S, 3] (or [1, S, 3]) up to a rigid
    translation (a zero mode of the energy) and wrapping."""
    d = (a - b).reshape(-1, 3)
    d = d - torch.round(d)
    d = d - d[0]
    return float((d - torch.round(d)).abs().max())


@pytest.mark.parametrize(("make", "scale"), [(_rocksalt, 1.3), (_heusler, 1.2)])
def test_a_stable_symmetric_crystal_is_a_fixed_point(make, scale):
    """Forces cancel by symmetry; float noise must not become steps (Adam's eps)."""
    t = encode([make()], 8)
    r = relax(t, scale, 100, 0.003)
    assert torch.allclose(r.lattice, t.lattice, atol=1e-3)
    assert _frac_shift(r.frac, t.frac) < 1e-3  # thousandths of an Angstrom


@pytest.mark.parametrize(("make", "scale"), [(_rocksalt, 1.3), (_heusler, 1.2)])
def test_relaxation_restores_a_shaken_prototype_and_keeps_species_volume_and_padding(make, scale):
    shaken = _distorted(make(), 0.25, 0)
    assert SpacegroupAnalyzer(shaken, symprec=0.1).get_space_group_number() < 225  # symmetry lost
    t = encode([shaken], 8)
    r = relax(t, scale, 200, 0.003)
    assert torch.equal(r.z, t.z)
    assert torch.allclose(cell_volume(r.lattice), cell_volume(t.lattice), rtol=1e-4)
    assert torch.equal(r.frac[t.z == 0], t.frac[t.z == 0])
    assert SpacegroupAnalyzer(decode(r)[0], symprec=0.1).get_space_group_number() == 225


def test_chunks_by_size_return_every_crystal_in_input_order():
    structs = [_heusler(), _distorted(_rocksalt(), 0.2, 0), _rocksalt(), _distorted(_heusler(), 0.2, 1)]
    t = encode(structs, 8)
    together = relax(t, 1.2, 20, 0.003, chunk=2)
    for i in range(len(structs)):
        alone = relax(t.subset(slice(i, i + 1)), 1.2, 20, 0.003)
        assert _frac_shift(together.frac[i], alone.frac[0]) < 1e-5
        assert torch.allclose(together.lattice[i], alone.lattice[0], atol=1e-5)


def test_the_domain_relaxes_only_when_the_settings_ask_for_it():
    t = encode([_distorted(_rocksalt(), 0.25, 0)], 8)
    domain = CrystalDomain(max_sites=8)
    assert domain.decoding_rules(t) is t  # the default settings: off
    r = domain.decoding_rules(t, GenerateConfig(relax_steps=50, relax_scale=1.3))
    assert not torch.allclose(r.frac, t.frac)
    with pytest.raises(ValueError):
        GenerateConfig(relax_steps=-1)

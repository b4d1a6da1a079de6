import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from design.domains.crystal import CrystalDomain
from design.domains.crystal.tensors import (
    CrystalTensors,
    EncodeError,
    cell_volume,
    cholesky_to_params,
    decode,
    encode_structure,
    image_distances,
    lattice_matrix,
    params_to_cholesky,
    self_pair_mask,
)


def test_round_trip_on_real_structures(real_structures):
    dom = CrystalDomain(max_sites=20)
    t = dom.encode(real_structures)
    assert t.z.shape == (len(real_structures), 20)
    assert t.frac.shape == (len(real_structures), 20, 3)
    assert ((t.frac >= 0) & (t.frac < 1)).all()
    back = dom.decode(t)
    matcher = StructureMatcher()
    for orig, dec in zip(real_structures, back, strict=True):
        assert dec.composition.reduced_formula == orig.composition.reduced_formula
        assert np.isclose(dec.volume / len(dec), orig.volume / len(orig), rtol=1e-4)
        assert matcher.fit(orig, dec)
    # decoding and re-encoding is a fixed point of the tensor form
    again = dom.encode(back)
    assert torch.equal(again.z, t.z)


def test_decode_builds_what_pymatgen_builds_from_atomic_numbers():
    """decode shares one species object per element among sites; the structures are the ones
    pymatgen builds from atomic numbers, non-finite lattices and coordinates outside [0, 1) included."""
    rng = torch.Generator().manual_seed(0)
    z = torch.randint(0, 40, (30, 6), generator=rng)
    frac = torch.rand(30, 6, 3, generator=rng) * 3 - 1
    lattice = params_to_cholesky(torch.tensor([[4.0, 5.0, 6.0, 80.0, 95.0, 100.0]]).repeat(30, 1))
    lattice[0, 0], lattice[1, 3] = float("nan"), float("inf")
    out = decode(CrystalTensors(z, frac, lattice))
    mats = np.nan_to_num(lattice_matrix(lattice.double()).numpy(), nan=1e-3, posinf=1e3, neginf=-1e3)
    for zi, fi, mi, s in zip(z.numpy(), frac.double().numpy(), mats, out, strict=True):
        keep = zi > 0
        ref = Structure(Lattice(mi), zi[keep].tolist(), np.mod(fi[keep], 1.0))
        assert s.as_dict() == ref.as_dict()
        assert [site.species for site in s] == [site.species for site in ref]


def test_padding_and_site_order():
    s = Structure(Lattice.cubic(4.2), ["O", "Mg"], [[0.5, 0.5, 0.5], [0, 0, 0]])
    z, frac, lat = encode_structure(s, max_sites=5, standardize=False)
    assert z.tolist() == [12, 8, 0, 0, 0]  # cation (lower electronegativity) first, then padding
    assert np.allclose(lat, [4.2, 0, 4.2, 0, 0, 4.2], atol=1e-6)  # cubic cell: a diagonal lattice


def test_too_many_sites_and_disorder_rejected():
    big = Structure(Lattice.cubic(10), ["Na"] * 4, [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    with pytest.raises(EncodeError, match="more than max_sites=3"):
        encode_structure(big, max_sites=3, standardize=False)
    disordered = Structure(Lattice.cubic(4), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(EncodeError, match="partial occupancy"):
        encode_structure(disordered, max_sites=4)


@pytest.mark.parametrize("params", [(3.9, 4.1, 5.2, 60, 75, 100), (5.0, 5.0, 7.0, 90, 90, 120), (3, 3, 3, 90, 90, 90)])
def test_lattice_matrix_matches_pymatgen(params):
    lattice = params_to_cholesky(torch.tensor([params], dtype=torch.float64))
    mine = lattice_matrix(lattice)[0].numpy()
    ref = Lattice.from_parameters(*params)
    # same cell in another orientation: the metric tensors agree
    assert np.allclose(mine @ mine.T, ref.matrix @ ref.matrix.T, atol=1e-6)
    assert np.allclose(Lattice(mine).parameters, params, atol=1e-6)
    assert np.isclose(cell_volume(lattice)[0].item(), ref.volume, rtol=1e-6)


def test_image_distances_match_pymatgen(real_structures):
    dom = CrystalDomain(max_sites=20)
    for s in real_structures[:20]:
        t = dom.encode([s])
        n = int((t.z > 0).sum())
        d = image_distances(t.frac.double(), t.lattice.double())[0, :n, :n]
        d = d.masked_fill(self_pair_mask(20)[:n, :n], 1e9).amin(-1)
        ref = dom.decode(t)[0].distance_matrix
        off = ~np.eye(n, dtype=bool)
        assert np.allclose(d.numpy()[off], ref[off], atol=1e-4)


def test_cholesky_parametrisation_round_trip_and_validity():
    params = torch.tensor([[3.9, 4.1, 5.2, 60, 75, 100], [5, 5, 7, 90, 90, 120], [3, 3, 3, 60, 60, 60]], dtype=torch.float64)
    assert torch.allclose(cholesky_to_params(params_to_cholesky(params)), params, atol=1e-6)
    # any lower-triangular lattice with a positive diagonal is a real cell of that volume
    torch.manual_seed(0)
    chol = torch.randn(200, 6, dtype=torch.float64) * 3
    chol[:, [0, 2, 5]] = chol[:, [0, 2, 5]].abs() + 0.05
    for row in chol[:20]:
        lat = Lattice(lattice_matrix(row[None])[0].numpy())
        assert np.isclose(lat.volume, float(row[0] * row[2] * row[5]), rtol=1e-6)
    assert torch.allclose(params_to_cholesky(cholesky_to_params(chol)), chol, atol=1e-6)

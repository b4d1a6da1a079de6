"""Constrained decoding rules (design/domains/crystal/constrain.py)."""

import math

import torch
from pymatgen.core import Composition

from design.domains.crystal.checks import compositional_reason
from design.domains.crystal.constrain import (
    charge_balanced_palette,
    drop_overlapping_sites,
    fit_element_volumes,
    place_unplaced_elements,
    rescale_to_volume,
)
from design.domains.crystal.elements import N_SPECIES
from design.domains.crystal.tensors import cell_volume, cholesky_to_params

CUBIC5 = torch.tensor([[5.0, 0.0, 5.0, 0.0, 0.0, 5.0]])  # lower-triangular lattice, 5 A cube


def test_overlapping_sites_merge_across_the_periodic_boundary():
    element = torch.tensor([[11, 11, 17, 11, 0]])
    frac = torch.tensor([[[0.0, 0.0, 0.0], [0.99, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.52], [0.3, 0.3, 0.3]]])
    # slot 1 is 0.05 A from slot 0 through the boundary and Na at slot 3 0.1 A from Cl: without
    # confidences the earlier slot of each pair stays; slot 4 is empty
    assert drop_overlapping_sites(element, frac, CUBIC5).tolist() == [[True, False, True, False, False]]


def test_three_coincident_atoms_keep_one():
    element = torch.tensor([[26, 26, 26]])
    frac = torch.tensor([[[0.2, 0.2, 0.2], [0.21, 0.2, 0.2], [0.2, 0.22, 0.2]]])
    assert drop_overlapping_sites(element, frac, CUBIC5).tolist() == [[True, False, False]]


def test_overlapping_sites_of_any_elements_keep_the_more_confident_one():
    element = torch.tensor([[11, 17, 8, 11, 0], [11, 17, 8, 11, 0]])
    # Cl (slot 1) sits 0.1 A from Na (slot 0) through the boundary, O (slot 2) 0.25 A from Cl;
    # slot 3 is far from everything; slot 4 is empty
    frac = torch.tensor([[0.0, 0.0, 0.0], [0.98, 0.0, 0.0], [0.93, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    frac = frac.expand(2, -1, -1)
    lattice = CUBIC5.expand(2, -1)
    confidence = torch.tensor([[0.9, 0.5, 0.8, 0.3, 1.0], [0.2, 0.9, 0.4, 0.3, 1.0]])
    keep = drop_overlapping_sites(element, frac, lattice, confidence)
    # first crystal: Na (0.9) stays, Cl goes, then O (0.8) is 0.35 A from Na: it goes too;
    # second: Cl (0.9) stays and removes both of its neighbours
    assert keep.tolist() == [[True, False, False, True, False], [False, True, False, True, False]]


def _logits(prefs: list[dict[int, float]]) -> torch.Tensor:
    lp = torch.full((1, len(prefs), N_SPECIES), -math.inf)
    for k, pref in enumerate(prefs):
        for z, v in pref.items():
            lp[0, k, z] = v
    return torch.log_softmax(lp, -1)


def test_an_unplaced_palette_element_takes_over_the_spare_site_that_rates_it_highest():
    # palette: Li, Co, O (entry 3 unused); crystal 0 drew no Co site; crystal 1 has all three;
    # crystal 2 lost Co and every other element has a single site; crystal 3's entry 1 repeats Li
    palette = torch.tensor([[3, 27, 8, 0], [3, 27, 8, 0], [3, 27, 8, 0], [3, 3, 8, 0]])
    types = torch.tensor([[1, 3, 3, 3, 0], [1, 2, 3, 3, 0], [1, 3, 0, 0, 0], [1, 3, 3, 0, 0]])
    prob = torch.full((4, 5, 5), 0.1)
    prob[:, 2, 2], prob[:, 3, 2] = 0.2, 0.3  # Co is likelier in slot 3 than in slot 2 ...
    prob[:, 0, 2] = prob[:, 4, 2] = 0.9  # ... and likeliest on Li's only site and in the empty slot
    out = place_unplaced_elements(palette, types, prob)
    assert out[0].tolist() == [1, 3, 3, 2, 0]  # Co takes O's slot 3: same sites, O keeps two
    assert torch.equal(out[1:], types[1:])  # complete, nothing to spare, or a duplicate: as drawn
    assert torch.equal(types[0], torch.tensor([1, 3, 3, 3, 0]))  # the input is not modified
    # two lost elements: each takes a site of an entry that still keeps one
    two = place_unplaced_elements(torch.tensor([[3, 27, 8, 0]]), torch.tensor([[1, 1, 1, 0, 0]]), prob[:1])
    assert two[0].tolist() == [2, 3, 1, 0, 0]


def test_charge_balanced_palette_picks_the_most_probable_balanced_elements():
    # sampled NaCl4 fails SMACT; of the decoder's alternatives MgCl4 (more probable) fails too,
    # TiCl4 passes, and NaF4 (the other entry's alternative) fails
    lp = _logits([{11: 0.0, 12: -0.3, 22: -0.6, 50: -0.9}, {17: 0.0, 9: -0.2}, {0: 0.0}])
    palette = torch.tensor([[11, 17, 0]])
    counts = torch.tensor([[1, 4, 0]])
    new, changed = charge_balanced_palette(lp, palette, counts)
    assert changed == 1 and new.tolist() == [[22, 17, 0]]
    for formula, ok in (("NaCl4", False), ("MgCl4", False), ("NaF4", False), ("TiCl4", True)):
        assert (compositional_reason(Composition(formula)) is None) == ok, formula


def test_valid_or_unrepairable_compositions_are_left_alone():
    lp = _logits([{11: 0.0, 12: -1.0}, {17: 0.0}])
    valid, changed = charge_balanced_palette(lp, torch.tensor([[11, 17]]), torch.tensor([[3, 3]]))
    assert changed == 0 and valid.tolist() == [[11, 17]]
    # Xe and Kr only: no element alternative, no neutral state choice -> kept as drawn
    lp = _logits([{54: 0.0}, {36: 0.0}])
    kept, changed = charge_balanced_palette(lp, torch.tensor([[54, 36]]), torch.tensor([[1, 1]]))
    assert changed == 0 and kept.tolist() == [[54, 36]]


def test_element_volumes_are_recovered_from_cells_built_from_them():
    # Na 20 A^3, Cl 30 A^3, O 10 A^3: cubic cells whose volume is exactly the sum over atoms
    rows = [[11, 17, 0, 0], [11, 11, 8, 0], [17, 8, 8, 8], [11, 17, 17, 8]]
    truth = {11: 20.0, 17: 30.0, 8: 10.0}
    z = torch.tensor(rows)
    side = torch.tensor([sum(truth[e] for e in r if e) ** (1 / 3) for r in rows])
    lattice = torch.stack([side, 0 * side, side, 0 * side, 0 * side, side], 1)
    vols = fit_element_volumes(z, lattice, N_SPECIES)
    assert len(vols) == N_SPECIES
    for e, v in truth.items():
        assert math.isclose(vols[e], v, rel_tol=1e-6)
    assert vols[0] == 0 and vols[26] == 0  # padding and unseen elements have no volume


def test_cells_are_scaled_to_the_predicted_volume_keeping_their_shape():
    vols = torch.zeros(N_SPECIES)
    vols[11], vols[17] = 20.0, 30.0
    oblique = torch.tensor([[4.0, 1.0, 5.0, 0.5, -0.7, 6.0]])
    lattice = torch.cat([CUBIC5, oblique, CUBIC5, CUBIC5])
    element = torch.tensor([[11, 17, 0], [11, 11, 17], [11, 26, 0], [0, 0, 0]])
    out = rescale_to_volume(element, lattice, vols)
    assert torch.allclose(cell_volume(out[:2]), torch.tensor([50.0, 70.0]))
    params_in, params_out = cholesky_to_params(lattice[:2]), cholesky_to_params(out[:2])
    assert torch.allclose(params_in[:, 3:], params_out[:, 3:], atol=1e-3)  # angles kept
    # Fe has no fitted volume, and an empty crystal has nothing to predict from: cells kept
    assert torch.equal(out[2:], lattice[2:])

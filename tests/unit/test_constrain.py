"""Constrained decoding rules (design/domains/crystal/constrain.py)."""

import math

import torch
from pymatgen.core import Composition

from design.domains.crystal.checks import compositional_reason
from design.domains.crystal.constrain import charge_balanced_palette, merge_duplicate_sites
from design.domains.crystal.elements import N_SPECIES

CUBIC5 = torch.tensor([[5.0, 0.0, 5.0, 0.0, 0.0, 5.0]])  # lower-triangular lattice, 5 A cube


def test_duplicate_same_element_sites_merge_across_the_periodic_boundary():
    element = torch.tensor([[11, 11, 17, 11, 0]])
    frac = torch.tensor([[[0.0, 0.0, 0.0], [0.99, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.52], [0.3, 0.3, 0.3]]])
    keep = merge_duplicate_sites(element, frac, CUBIC5)
    # slot 1 is 0.05 A from slot 0 through the boundary; Na at slot 3 is 0.1 A from Cl: a different
    # element, so it stays (the structural check must still see that clash); slot 4 is empty
    assert keep.tolist() == [[True, False, True, True, False]]


def test_three_coincident_atoms_keep_one():
    element = torch.tensor([[26, 26, 26]])
    frac = torch.tensor([[[0.2, 0.2, 0.2], [0.21, 0.2, 0.2], [0.2, 0.22, 0.2]]])
    assert merge_duplicate_sites(element, frac, CUBIC5).tolist() == [[True, False, False]]


def _logits(prefs: list[dict[int, float]]) -> torch.Tensor:
    lp = torch.full((1, len(prefs), N_SPECIES), -math.inf)
    for k, pref in enumerate(prefs):
        for z, v in pref.items():
            lp[0, k, z] = v
    return torch.log_softmax(lp, -1)


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

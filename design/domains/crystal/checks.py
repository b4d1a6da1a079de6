"""Exact, non-differentiable validity checks of crystal structures (CDVAE protocol).

* Structural validity: every interatomic distance > 0.5 Angstrom and cell volume > 0.1 Angstrom^3.
  Besides CDVAE's pairwise matrix we also require the shortest lattice translation to exceed
  0.5 Angstrom (an atom must not overlap its own periodic image), so our rate can only be lower.
* Compositional validity: SMACT charge neutrality with the SMACT 2014 oxidation states plus the
  Pauling electronegativity test; a single element or an all-metal composition counts as valid.
  :func:`smact_valid_counts` decides it without SMACT's objects; a test holds it equal to SMACT.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition, Element, Structure

from design.domains.base import CheckReport
from design.domains.crystal.elements import OXIDATION_SET, smact_table

MIN_DISTANCE = 0.5  # Angstrom
MIN_VOLUME = 0.1  # Angstrom^3


@dataclass(frozen=True)
class CrystalCheck(CheckReport):
    """Structural (distances, volume) and compositional (SMACT) validity of one crystal."""


def structural_reason(structure: Structure) -> str | None:
    """None when structurally valid, else a short reason."""
    n = len(structure)
    if n == 0:
        return "no sites"
    vol = structure.volume
    if not np.isfinite(vol) or vol <= MIN_VOLUME:
        return f"volume {vol:.3g} A^3 <= {MIN_VOLUME}"
    if n > 1:
        dm = structure.distance_matrix + np.eye(n) * 1e3
        dmin = float(dm.min())
        if dmin <= MIN_DISTANCE:
            return f"atoms {dmin:.2f} A apart (<= {MIN_DISTANCE})"
    shortest = min(structure.lattice.get_lll_reduced_lattice().abc)
    if shortest <= MIN_DISTANCE:
        return f"lattice translation {shortest:.2f} A (<= {MIN_DISTANCE}): atom overlaps its image"
    return None


@functools.lru_cache(maxsize=65536)
def smact_valid(formula: str) -> bool:
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(smact_validity(Composition(formula), oxidation_states_set=OXIDATION_SET))


@functools.lru_cache(maxsize=1 << 17)
def smact_valid_counts(composition: tuple[tuple[int, int], ...]) -> bool:
    """The SMACT test of :func:`smact_valid` on ``((atomic number, count), ...)``, without building
    pymatgen or SMACT objects (used to search compositions; a test compares it with SMACT).

    It decides what ``smact.screening.smact_validity`` decides with its defaults: one element, or
    only metals, passes; otherwise some choice of one oxidation state per element must be charge
    neutral on the gcd-reduced counts and pass the Pauling test (every cation less
    electronegative than every anion; an element without an electronegativity fails). Instead of
    SMACT's product over all state combinations, it tries each electronegativity cut: elements
    at or below it may take positive states, those above negative ones, and a set of reachable
    charge sums tells whether 0 is attainable.
    """
    merged: dict[int, int] = {}
    for z, k in composition:
        if k > 0:
            merged[z] = merged.get(z, 0) + int(k)
    if not merged:
        return False
    zs = sorted(merged)
    table = smact_table()
    if len(zs) == 1 or all(z in table.metals for z in zs):
        return True
    states = [table.states[z] for z in zs]
    eneg = [table.pauling[z] for z in zs]
    if any(not s for s in states) or any(e is None for e in eneg):
        return False
    g = math.gcd(*merged.values())
    counts = [merged[z] // g for z in zs]
    for cut in [-math.inf, *sorted(set(eneg))]:
        sums = {0}
        for st, e, k in zip(states, eneg, counts, strict=True):
            allowed = [o for o in st if (o > 0 and e <= cut) or (o < 0 and e > cut) or o == 0]
            if not allowed:
                break
            sums = {q + o * k for q in sums for o in allowed}
        else:
            if 0 in sums:
                return True
    return False


def compositional_reason(composition: Composition, max_elements: int = 8) -> str | None:
    """None when SMACT-valid, else a short reason."""
    n_el = len(composition.elements)
    if n_el == 0:
        return "empty composition"
    if n_el > max_elements:
        return f"{n_el} elements (> {max_elements}, beyond the SMACT enumeration limit)"
    amounts = composition.get_el_amt_dict()
    if all(float(v).is_integer() for v in amounts.values()):
        ok = smact_valid_counts(tuple((Element(el).Z, int(v)) for el, v in amounts.items()))
    else:  # fractional amounts: SMACT itself on the reduced formula
        ok = smact_valid(composition.reduced_composition.alphabetical_formula)
    if not ok:
        return "not charge-balanced under SMACT oxidation states / Pauling test"
    return None


def check(structure: Structure, max_elements: int = 8) -> CrystalCheck:
    s_reason = structural_reason(structure)
    c_reason = compositional_reason(structure.composition, max_elements) if len(structure) else "no sites"
    reasons = tuple(r for r in (s_reason, c_reason) if r)
    return CrystalCheck(structural=s_reason is None, compositional=c_reason is None, reasons=reasons)

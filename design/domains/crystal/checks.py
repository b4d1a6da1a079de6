"""Exact, non-differentiable validity checks of crystal structures (CDVAE protocol).

* Structural validity: every interatomic distance > 0.5 Angstrom and cell volume > 0.1 Angstrom^3.
  Besides CDVAE's pairwise matrix we also require the shortest lattice translation to exceed
  0.5 Angstrom (an atom must not overlap its own periodic image), so our rate can only be lower.
* Compositional validity: SMACT charge neutrality with the SMACT 2014 oxidation states plus the
  Pauling electronegativity test; a single element or an all-metal composition counts as valid.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Composition, Structure

from design.domains.crystal.elements import OXIDATION_SET

MIN_DISTANCE = 0.5  # Angstrom
MIN_VOLUME = 0.1  # Angstrom^3


@dataclass(frozen=True)
class CrystalCheck:
    structural: bool
    compositional: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def valid(self) -> bool:
        return self.structural and self.compositional


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
def _smact_valid(formula: str) -> bool:
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(smact_validity(Composition(formula), oxidation_states_set=OXIDATION_SET))


def compositional_reason(composition: Composition, max_elements: int = 8) -> str | None:
    """None when SMACT-valid, else a short reason."""
    n_el = len(composition.elements)
    if n_el == 0:
        return "empty composition"
    if n_el > max_elements:
        return f"{n_el} elements (> {max_elements}, beyond the SMACT enumeration limit)"
    formula = composition.reduced_composition.alphabetical_formula
    if not _smact_valid(formula):
        return "not charge-balanced under SMACT oxidation states / Pauling test"
    return None


def check(structure: Structure, max_elements: int = 8) -> CrystalCheck:
    s_reason = structural_reason(structure)
    c_reason = compositional_reason(structure.composition, max_elements) if len(structure) else "no sites"
    reasons = tuple(r for r in (s_reason, c_reason) if r)
    return CrystalCheck(structural=s_reason is None, compositional=c_reason is None, reasons=reasons)

"""Per-element property tables, indexed by atomic number, built from ASE, pymatgen and SMACT data.

Index 0 is the "empty site" class of the fixed-size tensor form; it has zero radius, mass and charge.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

MAX_Z = 103
N_SPECIES = MAX_Z + 1  # classes: 0 = empty site, 1..103 = element by atomic number

#: oxidation-state list used everywhere in the project (the SMACT 2014 set, as in CDVAE's protocol)
OXIDATION_SET = "smact14"


@dataclass(frozen=True)
class ElementTables:
    """Float64 arrays of length ``N_SPECIES``."""

    covalent_radius: np.ndarray  # Angstrom (Cordero et al., via ase.data)
    mass: np.ndarray  # atomic mass units (ase.data)
    electronegativity: np.ndarray  # Pauling; 0 where undefined
    ox_min: np.ndarray  # lowest common oxidation state (0 included for metals)
    ox_max: np.ndarray  # highest common oxidation state (0 included for metals)
    is_metal: np.ndarray  # 1.0 for SMACT metals

    def as_torch(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in self.__dict__.items()}


@functools.lru_cache(maxsize=1)
def tables() -> ElementTables:
    import smact
    from ase.data import atomic_masses, chemical_symbols, covalent_radii
    from pymatgen.core import Element

    metals = set(smact.metals)
    attr = f"oxidation_states_{OXIDATION_SET}"
    radius = np.zeros(N_SPECIES)
    mass = np.zeros(N_SPECIES)
    chi = np.zeros(N_SPECIES)
    lo = np.zeros(N_SPECIES)
    hi = np.zeros(N_SPECIES)
    metal = np.zeros(N_SPECIES)
    for z in range(1, N_SPECIES):
        sym = chemical_symbols[z]
        radius[z] = covalent_radii[z]
        mass[z] = atomic_masses[z]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for elements without a Pauling value
            x = Element(sym).X
        chi[z] = 0.0 if x is None or math.isnan(x) else x
        try:
            states = list(getattr(smact.Element(sym), attr) or [])
        except (NameError, KeyError, AttributeError):
            states = []
        if sym in metals:
            metal[z] = 1.0
            states.append(0)
        if not states:
            states = [0]
        lo[z], hi[z] = min(states), max(states)
    return ElementTables(radius, mass, chi, lo, hi, metal)


@dataclass(frozen=True)
class SmactTable:
    """SMACT's view of each element, indexed by atomic number (index 0 unused)."""

    states: tuple[tuple[int, ...], ...]  # oxidation states of OXIDATION_SET; () where SMACT has none
    pauling: tuple[float | None, ...]  # SMACT's Pauling electronegativity; None where undefined
    metals: frozenset[int]  # atomic numbers of SMACT metals


@functools.lru_cache(maxsize=1)
def smact_table() -> SmactTable:
    import smact
    from ase.data import chemical_symbols

    attr = f"oxidation_states_{OXIDATION_SET}"
    states: list[tuple[int, ...]] = [()]
    pauling: list[float | None] = [None]
    for z in range(1, N_SPECIES):
        try:
            el = smact.Element(chemical_symbols[z])
            states.append(tuple(getattr(el, attr) or ()))
            pauling.append(el.pauling_eneg)
        except (NameError, KeyError, AttributeError):
            states.append(())
            pauling.append(None)
    metals = frozenset(z for z in range(1, N_SPECIES) if chemical_symbols[z] in set(smact.metals))
    return SmactTable(tuple(states), tuple(pauling), metals)


def symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]

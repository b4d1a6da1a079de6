"""Physical descriptors of a crystal's Li environment: global features for the barrier surrogate.

The bond-valence barrier of a Li path is set by how far Li sits from its anions, how close the Li
sites are to each other and to the framework cations, how much room there is per Li and per anion,
and which anion it is. A graph network learns such quantities from a few hundred labels only
roughly, so the surrogate's readout also receives them directly (measured: on the held-out split
of the BVSE labels these 15 numbers alone rank barriers better than the graph network did).

The anion is the most electronegative element (Pauling); distances are to the nearest periodic
image within ``RADIUS``. A structure without Li, or a Li site without a neighbour of a kind within
``RADIUS``, gets ``RADIUS`` for that distance.
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Element, Structure

RADIUS = 6.0  # Angstrom
MOBILE = "Li"
NAMES = (
    "li_fraction", "volume_per_atom", "volume_per_li", "density", "volume_per_anion",
    "li_anion_dist_mean", "li_anion_dist_min", "li_li_dist_mean", "li_li_dist_min", "li_cation_dist_mean",
    "li_anion_cn_mean", "anion_z", "anion_electronegativity", "anion_radius", "n_elements",
)
# the descriptors that are interatomic distances (Angstrom): what displacing atoms changes
DISTANCE_NAMES = ("li_anion_dist_mean", "li_anion_dist_min", "li_li_dist_mean", "li_li_dist_min", "li_cation_dist_mean")


def _electronegativity(el: Element) -> float:
    x = el.X
    return 0.0 if x is None or not math.isfinite(x) else float(x)


def li_environment(structure: Structure, mobile: str = MOBILE) -> np.ndarray:
    """[len(NAMES)] float32 descriptors of ``structure`` (ordered; see module docstring)."""
    if not structure.is_ordered:
        raise ValueError(f"{structure.composition.reduced_formula} has partial occupancies; order it first")
    symbols = [site.specie.symbol for site in structure]
    anion_el = max(structure.composition.elements, key=_electronegativity)
    anion = anion_el.symbol
    li = [i for i, s in enumerate(symbols) if s == mobile]
    n_anion = sum(s == anion for s in symbols)
    d_anion, d_li, d_cation, cn = [], [], [], []
    if li:
        neighbours = structure.get_all_neighbors(RADIUS, sites=[structure[i] for i in li])
        for nbrs in neighbours:
            by_kind: dict[str, list[float]] = {"anion": [], "li": [], "cation": []}
            for nb in nbrs:
                if nb.nn_distance < 1e-8:
                    continue
                kind = "anion" if nb.specie.symbol == anion else "li" if nb.specie.symbol == mobile else "cation"
                by_kind[kind].append(nb.nn_distance)
            first = min(by_kind["anion"], default=RADIUS)
            d_anion.append(first)
            d_li.append(min(by_kind["li"], default=RADIUS))
            d_cation.append(min(by_kind["cation"], default=RADIUS))
            cn.append(sum(d < 1.25 * first for d in by_kind["anion"]))
    else:
        d_anion = d_li = d_cation = [RADIUS]
        cn = [0]
    volume, n = structure.volume, len(structure)
    radius = anion_el.atomic_radius
    return np.array([
        len(li) / n, volume / n, volume / max(len(li), 1), structure.density, volume / max(n_anion, 1),
        np.mean(d_anion), np.min(d_anion), np.mean(d_li), np.min(d_li), np.mean(d_cation),
        np.mean(cn), anion_el.Z, _electronegativity(anion_el), float(radius) if radius is not None else 0.0,
        len(structure.composition.elements),
    ], dtype=np.float32)


ELEMENT_FEATURES = ("electronegativity", "atomic_radius", "row", "group", "atomic_mass", "ionization_energy",
                    "electron_affinity", "max_oxidation_state", "min_oxidation_state", "average_ionic_radius")


def element_table(n_z: int = 100) -> np.ndarray:
    """[n_z, len(ELEMENT_FEATURES)] standardised physical properties of the elements (row = Z; row 0
    and properties pymatgen lacks get the column mean, i.e. 0): node features that let a graph
    network transfer what it learnt about one element to chemically similar ones."""
    import warnings

    rows = np.full((n_z, len(ELEMENT_FEATURES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every missing value
        for z in range(1, n_z):
            el = Element.from_Z(z)
            ox = el.common_oxidation_states
            vals = [_electronegativity(el) or np.nan, el.atomic_radius, el.row, el.group, el.atomic_mass,
                    el.ionization_energy, el.electron_affinity, max(ox, default=0), min(ox, default=0),
                    el.average_ionic_radius or np.nan]
            rows[z] = [np.nan if v is None else float(v) for v in vals]
    mean, std = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
    out = (rows - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)

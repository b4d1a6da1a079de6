"""Exact, non-differentiable validity checks of crystal structures (CDVAE protocol).

* Structural validity: every interatomic distance > 0.5 Angstrom and cell volume > 0.1 Angstrom^3.
  Besides CDVAE's pairwise matrix we also require the shortest lattice translation to exceed
  0.5 Angstrom (an atom must not overlap its own periodic image), so our rate can only be lower.
  :func:`reference_structural_reason` is the definition (pymatgen's periodic distance matrix and
  LLL-reduced lattice). :func:`structural_reasons` decides the same on many structures at once:
  :func:`proven_valid` proves validity with vectorised NumPy geometry (every periodic image that
  could bring two sites, or a site and its own image, within reach, from the cell's
  perpendicular widths), and only what it cannot prove valid goes to the reference, so the
  verdicts and reasons are the reference's; a test holds the two equal.
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
# proven_valid clears every threshold by this much (Angstrom; relative for the volume and the image
# shells), far above float64 rounding, so whatever it passes the reference passes too
PROOF_MARGIN = 1e-6
PROOF_MAX_EXTENT = 1e4  # Angstrom: structures with a Cartesian coordinate possibly beyond go to the reference
PROOF_MAX_SHELLS = 3  # image shells per axis; cells needing more (a width under ~0.15 A) go to the reference
PROOF_CHUNK = 1 << 18  # pair-image vectors computed at once (a few MB per array)


@dataclass(frozen=True)
class CrystalCheck(CheckReport):
    """Structural (distances, volume) and compositional (SMACT) validity of one crystal."""


def reference_structural_reason(structure: Structure) -> str | None:
    """None when structurally valid, else a short reason: the definition, with pymatgen."""
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


def structural_reasons(structures: list[Structure]) -> list[str | None]:
    """:func:`reference_structural_reason` of each structure: None where :func:`proven_valid`
    proves it valid, else the reference's verdict and reason."""
    proven = proven_valid(structures)
    return [None if ok else reference_structural_reason(s) for s, ok in zip(structures, proven, strict=True)]


def structural_reason(structure: Structure) -> str | None:
    """None when structurally valid, else a short reason (see :func:`structural_reasons`)."""
    return structural_reasons([structure])[0]


def proven_valid(structures: list[Structure]) -> np.ndarray:
    """[N] bool, True where vectorised geometry proves a structure structurally valid.

    True implies that :func:`reference_structural_reason` finds it valid; False means not proven
    (invalid, within :data:`PROOF_MARGIN` of a threshold, non-finite, beyond
    :data:`PROOF_MAX_EXTENT`, a cell too thin for :data:`PROOF_MAX_SHELLS`, or a lattice not
    periodic along all three axes).

    A vector no longer than ``reach`` (0.5 A plus the margin) has fractional components of at most
    ``reach / w_i``, where ``w_i`` is the cell's width perpendicular to the other two lattice
    vectors (its volume over ``|a_j x a_k|``). With a pair's difference wrapped into [-0.5, 0.5],
    only image shifts ``|k_i| <= 0.5 + reach / w_i`` can bring it within reach, so those images
    decide exactly whether any distance, between two sites or between a site and its own image
    (the shortest lattice translation), is within reach: one image for cells wider than about
    1 A, 27 from about 0.34 A. Structures with the same number of sites and image shells are
    computed together (nothing padded).
    """
    ok = np.zeros(len(structures), dtype=bool)
    groups: dict[tuple[int, tuple[int, int, int]], list[int]] = {}
    for i, s in enumerate(structures):
        shells = image_shells(s.lattice.matrix) if len(s) and s.lattice.is_3d_periodic else None
        if shells is not None:
            groups.setdefault((len(s), shells), []).append(i)
    reach = MIN_DISTANCE + PROOF_MARGIN
    for (_, shells), idx in groups.items():
        frac = np.stack([structures[i].frac_coords for i in idx])  # [M, n, 3]
        mats = np.stack([structures[i].lattice.matrix for i in idx])  # [M, 3, 3]
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are not proven
            sane = np.isfinite(frac).all(axis=(1, 2)) & (
                (np.abs(frac).max(axis=(1, 2)) + 1) * np.abs(mats).max(axis=(1, 2)) <= PROOF_MAX_EXTENT
            )
            ok[idx] = sane & _all_farther(frac, mats, shells, reach)
    return ok


def image_shells(matrix: np.ndarray) -> tuple[int, int, int] | None:
    """Image shifts per axis that reach every vector of at most 0.5 A (plus the margin) from a
    difference wrapped into [-0.5, 0.5] (see :func:`proven_valid`), for a lattice matrix (rows
    are the lattice vectors); None for a cell :func:`proven_valid` leaves to the reference
    (non-finite, volume within the margin of 0.1 A^3 or below, or thinner than the shells allow)."""
    a, b, c = matrix.tolist()
    if not all(math.isfinite(x) for x in (*a, *b, *c)):
        return None
    faces = (_cross(b, c), _cross(c, a), _cross(a, b))  # |a_j x a_k| = volume / width_i
    vol = abs(sum(x * y for x, y in zip(a, faces[0], strict=True)))
    if not (math.isfinite(vol) and vol * (1 - PROOF_MARGIN) > MIN_VOLUME):
        return None
    scale = (MIN_DISTANCE + PROOF_MARGIN) * (1 + PROOF_MARGIN) / vol
    bounds = [0.5 + scale * math.hypot(*f) for f in faces]
    if not max(bounds) < PROOF_MAX_SHELLS + 1:  # also False for inf / nan
        return None
    return tuple(math.floor(x) for x in bounds)


def _cross(u: list[float], v: list[float]) -> tuple[float, float, float]:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _all_farther(frac: np.ndarray, mats: np.ndarray, shells: tuple[int, ...], reach: float) -> np.ndarray:
    """[M] bool: every distance between two sites, or a site and its own image, over the image
    shifts within ``shells`` (per axis) exceeds ``reach``."""
    first, second, shift = _pair_images(frac.shape[1], shells)
    out = np.ones(len(frac), dtype=bool)
    if not len(first):  # one site and no image within reach
        return out
    step = max(1, PROOF_CHUNK // len(first))
    for start in range(0, len(frac), step):
        f = frac[start:start + step]
        d = f[:, second] - f[:, first]  # [m, Q, 3]
        d -= np.round(d)
        if shift is not None:
            d += shift
        vec = d @ mats[start:start + step]
        out[start:start + step] = np.einsum("mqx,mqx->mq", vec, vec).min(axis=1) > reach * reach
    return out


@functools.lru_cache(maxsize=256)
def _pair_images(n: int, shells: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Index arrays ``first``, ``second`` [Q] and integer image shifts [Q, 3] (None: all zero) of
    every site pair i <= j and image shift within ``shells``, a site with itself unshifted left
    out; pairs i > j add nothing, the shifts being symmetric."""
    grid = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in shells), indexing="ij"), -1).reshape(-1, 3)
    first, second = np.triu_indices(n)
    first, second = np.repeat(first, len(grid)), np.repeat(second, len(grid))
    shift = np.tile(grid, (n * (n + 1) // 2, 1))
    keep = (first != second) | shift.any(axis=1)
    first, second, shift = first[keep], second[keep], shift[keep].astype(np.float64)
    for a in (first, second, shift):
        a.setflags(write=False)  # cached: shared by every call
    return first, second, (shift if shift.any() else None)


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
    return check_many([structure], max_elements)[0]


def check_many(structures: list[Structure], max_elements: int = 8) -> list[CrystalCheck]:
    """:func:`check` of each structure, the structural stage vectorised over all of them."""
    reasons = structural_reasons(structures)
    return [_report(s, r, max_elements) for s, r in zip(structures, reasons, strict=True)]


def _report(structure: Structure, s_reason: str | None, max_elements: int) -> CrystalCheck:
    c_reason = compositional_reason(structure.composition, max_elements) if len(structure) else "no sites"
    reasons = tuple(r for r in (s_reason, c_reason) if r)
    return CrystalCheck(structural=s_reason is None, compositional=c_reason is None, reasons=reasons)

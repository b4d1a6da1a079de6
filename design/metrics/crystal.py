"""Distribution metrics of generated crystals against a reference set (CDVAE protocol).

* Structure fingerprint: matminer's ``CrystalNNFingerprint`` with the ``ops`` preset, computed for
  every site and averaged over sites (61 numbers per crystal).
* Composition fingerprint: matminer's ``ElementProperty`` with the ``magpie`` preset (132 numbers),
  standardised with means and standard deviations fitted on a reference set (CDVAE ships such a
  scaler fitted on MP-20 train; we fit ours on our training split, see :func:`fit_scaler`).
* COV-R (recall): the fraction of reference crystals whose nearest generated crystal lies within
  ``struct_cutoff`` in structure-fingerprint distance and whose nearest generated crystal lies
  within ``comp_cutoff`` in composition-fingerprint distance (Euclidean; the two nearest neighbours
  are taken separately, as in CDVAE's ``compute_cov``). COV-P (precision) swaps the roles.
* Wasserstein-1 distances of density (g/cm^3) and of the number of distinct elements.

Fingerprints that CrystalNN cannot compute (it raises for a few odd geometries) are NaN rows and
are left out of coverage; how many is reported.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from design.parallel import chunked_map

log = logging.getLogger(__name__)

STRUCT_CUTOFF = 0.4
COMP_CUTOFF = 10.0
STRUCT_DIM = 61
COMP_DIM = 132
SITE_BINS = ((1, 4), (5, 8), (9, 12), (13, 16), (17, 20))  # site-count ranges of COV-R by crystal size

_FEATURIZERS: tuple | None = None


def _featurizers() -> tuple:
    global _FEATURIZERS
    if _FEATURIZERS is None:
        from matminer.featurizers.composition import ElementProperty
        from matminer.featurizers.site import CrystalNNFingerprint

        _FEATURIZERS = (CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie"))
    return _FEATURIZERS


def structure_fingerprint(structure: Structure) -> np.ndarray:
    """[61] mean CrystalNN site fingerprint; NaN where CrystalNN fails."""
    site_fp, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [site_fp.featurize(structure, i) for i in range(len(structure))]
        return np.asarray(sites, dtype=np.float64).mean(axis=0)
    except Exception as err:  # CrystalNN raises ValueError/IndexError/RuntimeError on odd geometries
        log.debug("CrystalNN failed on %s: %s", structure.composition.reduced_formula, err)
        return np.full(STRUCT_DIM, np.nan)


def composition_fingerprint(structure: Structure) -> np.ndarray:
    """[132] Magpie element-property statistics of the structure's composition (unscaled)."""
    return composition_features(structure.composition)


def composition_features(composition) -> np.ndarray:
    """[132] Magpie element-property statistics of a pymatgen ``Composition`` (fractional amounts,
    so partially occupied compositions work too)."""
    _, comp_fp = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(comp_fp.featurize(composition), dtype=np.float64)


def _fingerprint_chunk(structures: list[Structure]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(structure_fingerprint(s), composition_fingerprint(s)) for s in structures]


@dataclass
class Fingerprints:
    """Structure [N, 61] and composition [N, 132] fingerprints (rows NaN where they failed)."""

    struct: np.ndarray
    comp: np.ndarray

    def __len__(self) -> int:
        return len(self.struct)

    @property
    def failed(self) -> int:
        return int((~np.isfinite(self.struct).all(1) | ~np.isfinite(self.comp).all(1)).sum())


def fingerprints(structures: Sequence[Structure], workers: int = 1, label: str = "") -> Fingerprints:
    """Fingerprints of ``structures`` in order, on ``workers`` processes."""
    pairs = chunked_map(_fingerprint_chunk, list(structures), workers, chunk=50, label=label, every=500)
    if not pairs:
        return Fingerprints(np.zeros((0, STRUCT_DIM)), np.zeros((0, COMP_DIM)))
    return Fingerprints(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation of composition fingerprints."""

    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def fit_scaler(comp: np.ndarray) -> Scaler:
    """Means and standard deviations (floored at 1e-8, like scikit-learn) of finite rows."""
    ok = comp[np.isfinite(comp).all(1)]
    if len(ok) < 2:
        raise ValueError(f"a composition scaler needs at least 2 finite fingerprints, got {len(ok)}")
    std = ok.std(0)
    return Scaler(ok.mean(0), np.where(std < 1e-8, 1.0, std))


def _nearest(a: np.ndarray, b: np.ndarray, block: int = 2048) -> np.ndarray:
    """[len(a)] Euclidean distance from each row of ``a`` to its nearest row of ``b``."""
    out = np.empty(len(a))
    b2 = (b * b).sum(1)
    for i in range(0, len(a), block):
        x = a[i : i + block]
        d2 = (x * x).sum(1)[:, None] + b2[None, :] - 2.0 * x @ b.T
        out[i : i + block] = np.sqrt(np.clip(d2.min(1), 0.0, None))
    return out


def coverage(
    generated: Fingerprints,
    reference: Fingerprints,
    scaler: Scaler,
    struct_cutoff: float = STRUCT_CUTOFF,
    comp_cutoff: float = COMP_CUTOFF,
    reference_sites: Sequence[int] | None = None,
) -> dict[str, float]:
    """COV-R and COV-P (fractions in [0, 1]), the same for each criterion alone (``*_struct``,
    ``*_comp``), and mean nearest-neighbour distances (AMSD/AMCD). With ``reference_sites`` (the
    reference crystals' site counts), also COV-R within each range of :data:`SITE_BINS`
    (``cov_recall_sites_<lo>_<hi>``; NaN for an empty range)."""
    g_ok = np.isfinite(generated.struct).all(1) & np.isfinite(generated.comp).all(1)
    r_ok = np.isfinite(reference.struct).all(1) & np.isfinite(reference.comp).all(1)
    if g_ok.sum() == 0 or r_ok.sum() == 0:
        raise ValueError(
            f"coverage needs fingerprints on both sides; usable generated={int(g_ok.sum())}, "
            f"reference={int(r_ok.sum())}"
        )
    gs, gc = generated.struct[g_ok], scaler.transform(generated.comp[g_ok])
    rs, rc = reference.struct[r_ok], scaler.transform(reference.comp[r_ok])
    recall_s, recall_c = _nearest(rs, gs), _nearest(rc, gc)
    prec_s, prec_c = _nearest(gs, rs), _nearest(gc, rc)
    covered = (recall_s <= struct_cutoff) & (recall_c <= comp_cutoff)  # [usable reference crystals]
    out = {
        "cov_recall": float(covered.mean()),
        "cov_precision": float(((prec_s <= struct_cutoff) & (prec_c <= comp_cutoff)).mean()),
        # each criterion alone: which of the two limits the coverage
        "cov_recall_struct": float((recall_s <= struct_cutoff).mean()),
        "cov_recall_comp": float((recall_c <= comp_cutoff).mean()),
        "cov_precision_struct": float((prec_s <= struct_cutoff).mean()),
        "cov_precision_comp": float((prec_c <= comp_cutoff).mean()),
        "amsd_recall": float(recall_s.mean()),
        "amcd_recall": float(recall_c.mean()),
        "amsd_precision": float(prec_s.mean()),
        "amcd_precision": float(prec_c.mean()),
        "cov_generated_used": int(g_ok.sum()),
        "cov_reference_used": int(r_ok.sum()),
    }
    if reference_sites is not None:
        # recall by the reference crystals' size: which test crystals the samples miss
        sites = np.asarray(reference_sites)[r_ok]
        for lo, hi in SITE_BINS:
            inside = (sites >= lo) & (sites <= hi)
            out[f"cov_recall_sites_{lo}_{hi}"] = float(covered[inside].mean()) if inside.any() else float("nan")
    return out


def density(structures: Sequence[Structure]) -> np.ndarray:
    """[N] density in g/cm^3."""
    return np.array([float(s.density) for s in structures])


def n_elements(structures: Sequence[Structure]) -> np.ndarray:
    """[N] number of distinct elements."""
    return np.array([len(s.composition.elements) for s in structures], dtype=np.float64)


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples."""
    from scipy.stats import wasserstein_distance

    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"Wasserstein distance needs two non-empty samples, got sizes {len(a)} and {len(b)}")
    return float(wasserstein_distance(a, b))

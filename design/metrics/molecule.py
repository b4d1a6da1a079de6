"""MOSES-protocol metrics of generated molecules, computed with RDKit and the ``fcd`` package.

Definitions follow the MOSES benchmark (Polykovskiy et al. 2020):

* ``valid``: fraction of generated samples that RDKit sanitises as one molecule;
* ``unique@k``: fraction of distinct canonical SMILES among the first ``k`` valid samples;
* ``novelty``: fraction of the distinct valid molecules that are not in the training set;
* ``FCD``: Frechet distance between Gaussians fitted to ChemNet penultimate activations [512] of
  the generated and the reference molecules (the ``fcd`` package ships the ChemNet weights);
* ``SNN``: mean over generated molecules of the Tanimoto similarity to the nearest reference
  molecule (Morgan fingerprints, radius 2, 1,024 bits);
* ``Frag`` / ``Scaf``: cosine similarity of the count vectors of BRICS fragments / Bemis-Murcko
  scaffolds (generated vs reference);
* ``IntDiv``: 1 - mean pairwise Tanimoto similarity inside the generated set (p = 1);
* ``Filters``: fraction of valid molecules passing the medicinal-chemistry filters
  (:mod:`design.domains.molecule.chemistry`).

Fingerprints are bit matrices [N, 1024] (uint8); similarities are computed as float32 matrix
products in blocks, so memory stays bounded for any set size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import BRICS, rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold

N_BITS = 1024


def morgan_bits(mols: Iterable[Chem.Mol], radius: int = 2, n_bits: int = N_BITS) -> np.ndarray:
    """[N, n_bits] uint8 Morgan fingerprint bits."""
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    rows = [gen.GetFingerprintAsNumPy(m).astype(np.uint8) for m in mols]
    return np.stack(rows) if rows else np.zeros((0, n_bits), dtype=np.uint8)


def _tanimoto_blocks(a: np.ndarray, b: np.ndarray, block: int = 4096):
    """Yield (row slice, [rows, len(b)] Tanimoto similarities) of bit matrices ``a`` vs ``b``."""
    bt = torch.from_numpy(b).float()
    nb = bt.sum(1)
    for i in range(0, len(a), block):
        at = torch.from_numpy(a[i : i + block]).float()
        sims = []
        for j in range(0, len(b), 4 * block):
            inter = at @ bt[j : j + 4 * block].T
            union = at.sum(1, keepdim=True) + nb[None, j : j + 4 * block] - inter
            sims.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter)))
        yield slice(i, i + len(at)), torch.cat(sims, dim=1)


def nearest_similarity(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[N] Tanimoto similarity of each fingerprint of ``gen`` to its nearest one in ``ref``."""
    if len(gen) == 0 or len(ref) == 0:
        raise ValueError(f"nearest similarity needs fingerprints on both sides, got {len(gen)} and {len(ref)}")
    return torch.cat([s.amax(1) for _, s in _tanimoto_blocks(gen, ref)]).numpy().astype(np.float64)


def snn(gen: np.ndarray, ref: np.ndarray) -> float:
    """Mean nearest-neighbour Tanimoto similarity of each generated fingerprint to ``ref``."""
    return float(nearest_similarity(gen, ref).mean())


def internal_diversity(fps: np.ndarray) -> float:
    """1 - mean Tanimoto similarity over all ordered pairs (self pairs included, as MOSES does)."""
    total = sum(float(s.sum()) for _, s in _tanimoto_blocks(fps, fps))
    return 1.0 - total / (len(fps) ** 2)


def fragments(mol: Chem.Mol) -> list[str]:
    """Canonical SMILES of the BRICS fragments of ``mol`` (its BRICS bonds broken once)."""
    broken = BRICS.BreakBRICSBonds(mol)
    return [Chem.MolToSmiles(f) for f in Chem.GetMolFrags(broken, asMols=True, sanitizeFrags=False)]


def scaffold(mol: Chem.Mol) -> str:
    """Bemis-Murcko scaffold SMILES ("" for an acyclic molecule)."""
    try:
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol)
    except (ValueError, RuntimeError):
        return ""


def count(mols: Iterable[Chem.Mol], key) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in mols:
        got = key(m)
        out.update(got if isinstance(got, list) else [got])
    return out


def cosine(a: Counter[str], b: Counter[str], drop_empty: bool = False) -> float:
    """Cosine similarity of two count vectors over the union of their keys."""
    keys = set(a) | set(b)
    if drop_empty:
        keys.discard("")
    va = np.array([a.get(k, 0) for k in keys], dtype=np.float64)
    vb = np.array([b.get(k, 0) for k in keys], dtype=np.float64)
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    return float(va @ vb / denom) if denom > 0 else 0.0


def unique_at(canonical: Sequence[str], k: int) -> float:
    """Fraction of distinct entries among the first ``k`` (all if fewer)."""
    head = canonical[:k]
    return len(set(head)) / len(head) if head else 0.0


def novelty(canonical: Iterable[str], train: set[str]) -> float:
    """Fraction of the distinct molecules not in ``train`` (canonical SMILES)."""
    distinct = set(canonical)
    return len(distinct - train) / len(distinct) if distinct else 0.0


# ----------------------------------------------------------------------------- FCD
def chemnet_stats(smiles: Sequence[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean [512] and covariance [512, 512] of ChemNet activations of ``smiles`` (float64)."""
    import fcd

    model = fcd.load_ref_model()
    act = fcd.get_predictions(model, list(smiles), batch_size=batch_size, n_jobs=0, device="cpu")  # in-process
    act = act[np.isfinite(act).all(1)].astype(np.float64)
    return act.mean(0), np.cov(act.T)


def frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    import fcd

    return float(fcd.calculate_frechet_distance(mu1, sigma1, mu2, sigma2))

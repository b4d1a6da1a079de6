"""The stability oracle: CHGNet energies of candidates, judged against the training crystals.

CHGNet (its pretrained weights ship inside the ``chgnet`` wheel) gives the energy per atom of a
structure, optionally after a short relaxation of positions and cell (CHGNet's ``StructOptimizer``:
ASE FIRE on a Frechet cell filter). Raw energies per atom differ by composition far more than by
plausibility, so they are compared through an additive reference: per-element energies ``mu`` fitted
by least squares to the training crystals' CHGNet energies (``E ~ sum_i n_i mu_i``), and the
*excess* energy per atom ``(E - sum_i n_i mu_i) / N``. Its distribution over the training crystals
is the yardstick: a candidate's ``excess_percentile`` is the fraction of training crystals with a
lower excess (near 1: less stable than almost every known crystal, so it should rank low).
Elements absent from the training crystals have no ``mu``; such a candidate gets NaN, not a guess.

A structure CHGNet cannot evaluate (for example isolated atoms beyond its graph cutoff) gives a
result with ``ok = False`` and the message, never an exception.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

log = logging.getLogger(__name__)


@dataclass
class EnergyResult:
    ok: bool
    energy_per_atom: float = math.nan  # eV/atom, of the structure as given
    relaxed_energy_per_atom: float = math.nan  # eV/atom after relaxation (= energy_per_atom without)
    relax_steps: int = 0
    relaxed: Structure | None = None
    message: str = ""

    @property
    def final_energy_per_atom(self) -> float:
        return self.relaxed_energy_per_atom if math.isfinite(self.relaxed_energy_per_atom) else self.energy_per_atom


class CHGNetEnergies:
    """CHGNet energies per atom, static or after ``relax_steps`` FIRE steps (``fmax`` eV/A)."""

    def __init__(self, relax_steps: int = 0, fmax: float = 0.1, device: str = "cpu", batch_size: int = 16):
        if isinstance(relax_steps, bool) or not isinstance(relax_steps, int) or relax_steps < 0:
            raise ValueError(f"relax_steps must be an int >= 0, got {relax_steps!r}")
        if not fmax > 0:
            raise ValueError(f"fmax={fmax} eV/A must be > 0")
        from chgnet.model import CHGNet

        self.model = CHGNet.load(verbose=False, use_device=device)
        self.relax_steps = relax_steps
        self.fmax = fmax
        self.device = device
        self.batch_size = batch_size
        self._optimizer = None

    def _static(self, structures: Sequence[Structure]) -> list[EnergyResult]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                preds = self.model.predict_structure(list(structures), task="e", batch_size=self.batch_size)
            preds = [preds] if isinstance(preds, dict) else preds
            return [EnergyResult(True, float(p["e"]), float(p["e"])) for p in preds]
        except Exception as err:  # noqa: BLE001 - a bad structure in the batch: evaluate one by one
            if len(structures) == 1:
                return [EnergyResult(False, message=f"{type(err).__name__}: {err}"[:300])]
            return [r for s in structures for r in self._static([s])]

    def _relax(self, structure: Structure, start: EnergyResult) -> EnergyResult:
        from chgnet.model import StructOptimizer

        if self._optimizer is None:
            self._optimizer = StructOptimizer(model=self.model, use_device=self.device, on_isolated_atoms="ignore")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._optimizer.relax(structure, fmax=self.fmax, steps=self.relax_steps, verbose=False,
                                            loginterval=self.relax_steps)
            traj = out["trajectory"]
            e_final = float(traj.energies[-1]) / len(structure)
            return EnergyResult(True, start.energy_per_atom, e_final, len(traj.energies) - 1, out["final_structure"])
        except Exception as err:  # noqa: BLE001 - keep the static energy, record why relaxation failed
            return EnergyResult(True, start.energy_per_atom, start.energy_per_atom, 0, None,
                                f"relaxation failed: {type(err).__name__}: {err}"[:300])

    def __call__(self, structures: Sequence[Structure]) -> list[EnergyResult]:
        results = self._static(structures)
        if self.relax_steps > 0:
            results = [self._relax(s, r) if r.ok else r for s, r in zip(structures, results, strict=True)]
        return results


def _counts(structures: Sequence[Structure], elements: list[str]) -> np.ndarray:
    index = {e: i for i, e in enumerate(elements)}
    out = np.zeros((len(structures), len(elements)))
    for r, s in enumerate(structures):
        for el, n in s.composition.get_el_amt_dict().items():
            out[r, index[el]] += n
    return out


@dataclass
class StabilityReference:
    """Per-element energies and the training crystals' excess-energy distribution (sorted)."""

    mu: dict[str, float]
    excess_sorted: np.ndarray

    @classmethod
    def fit(cls, structures: Sequence[Structure], energy_per_atom: Sequence[float]) -> StabilityReference:
        e = np.asarray(energy_per_atom, dtype=float)
        keep = np.isfinite(e)
        if keep.sum() < 2:
            raise ValueError("at least two training crystals with finite energies are needed for the reference")
        structures = [s for s, k in zip(structures, keep, strict=True) if k]
        e = e[keep]
        elements = sorted({el.symbol for s in structures for el in s.composition.elements})
        counts = _counts(structures, elements)
        n_atoms = counts.sum(1)
        mu, *_ = np.linalg.lstsq(counts, e * n_atoms, rcond=None)
        excess = (e * n_atoms - counts @ mu) / n_atoms
        return cls(dict(zip(elements, mu.tolist(), strict=True)), np.sort(excess))

    def excess(self, structures: Sequence[Structure], energy_per_atom: Sequence[float]) -> np.ndarray:
        """Energy per atom above the additive reference; NaN for unknown elements or energies."""
        out = np.full(len(structures), np.nan)
        for i, (s, e) in enumerate(zip(structures, energy_per_atom, strict=True)):
            amounts = s.composition.get_el_amt_dict()
            if math.isfinite(e) and all(el in self.mu for el in amounts):
                n = sum(amounts.values())
                out[i] = e - sum(self.mu[el] * k for el, k in amounts.items()) / n
        return out

    def percentile(self, excess: np.ndarray) -> np.ndarray:
        """Fraction of training crystals with a lower excess energy (NaN stays NaN)."""
        excess = np.asarray(excess, dtype=float)
        out = np.searchsorted(self.excess_sorted, excess, side="left") / len(self.excess_sorted)
        return np.where(np.isfinite(excess), out, np.nan)

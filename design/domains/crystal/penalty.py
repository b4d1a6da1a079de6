"""Differentiable physics penalty for (soft) crystal batches, used as a training loss.

Three terms, each a [B] tensor, zero for physically sound crystals:

* ``distance``: sum over site pairs and periodic images (self images included) of
  ``relu(scale * (r_i + r_j) - d_ij)^2``, per atom (Angstrom^2 / atom), with ``r`` the expected
  covalent radius of each slot under its species probabilities, weighted by the occupancy of both
  slots (empty slots never clash). With ``distance_moves_cell`` false its gradient reaches the
  coordinates only, so a clash is not resolved by inflating the whole cell.
* ``charge``: interval relaxation of charge neutrality. Each element may take oxidation states
  between its lowest and highest common state (SMACT 2014 set; metals may also be 0, so alloys
  pass). A neutral assignment can only exist if ``sum(min) <= 0 <= sum(max)``; the term is the
  distance of 0 from that interval, per atom (elementary charges / atom). It is a necessary
  condition for SMACT charge neutrality, cheap and smooth in the species probabilities.
* ``density``: squared log-distance of the mass density from [density_min, density_max] g/cm^3
  (dimensionless; the log keeps a collapsed cell's gradient bounded). A collapsed cell
  (impossible angles, volume near 0) has a huge density and is penalised here.
"""

from __future__ import annotations

import math

import torch

from design.config import PenaltyConfig
from design.domains.crystal.tensors import CrystalBatch, cell_volume, image_distances, self_pair_mask

AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


class CrystalPenalty(torch.nn.Module):
    """Holds the element tables as buffers so the penalty follows the model's device."""

    def __init__(self, cfg: PenaltyConfig, element_tables: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        for name in ("covalent_radius", "mass", "ox_min", "ox_max"):
            self.register_buffer(name, element_tables[name].clone(), persistent=False)

    def terms(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        p = batch.species  # [B, S, V]
        cfg = self.cfg
        radius = p @ self.covalent_radius  # [B, S]
        lattice = batch.lattice if cfg.distance_moves_cell else batch.lattice.detach()
        d = image_distances(batch.frac, lattice)  # [B, S, S, 27]
        threshold = cfg.distance_scale * (radius[:, :, None] + radius[:, None, :])  # [B, S, S]
        occ = batch.mask  # [B, S]
        pair = (occ[:, :, None] * occ[:, None, :])[..., None]  # empty slots never clash
        clash = pair * torch.relu(threshold[..., None] - d) ** 2
        clash = clash.masked_fill(self_pair_mask(p.shape[1], p.device), 0.0)
        n_atoms = occ.sum(1)
        distance = 0.5 * clash.sum(dim=(1, 2, 3)) / n_atoms.clamp(min=1.0)

        q_lo = (p @ self.ox_min).sum(1)
        q_hi = (p @ self.ox_max).sum(1)
        charge = (torch.relu(q_lo) + torch.relu(-q_hi)) / n_atoms.clamp(min=1.0)

        mass = (p @ self.mass).sum(1)
        volume = cell_volume(batch.lattice).clamp(min=1e-3)
        density_gcc = mass / volume * AMU_PER_A3_TO_G_PER_CM3
        log_rho = torch.log(density_gcc.clamp(min=1e-6))
        density = (
            torch.relu(math.log(cfg.density_min) - log_rho)
            + torch.relu(log_rho - math.log(cfg.density_max))
        ) ** 2
        return {"distance": distance, "charge": charge, "density": density, "density_gcc": density_gcc}

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        """[B] weighted total penalty."""
        t = self.terms(batch)
        c = self.cfg
        return c.distance_weight * t["distance"] + c.charge_weight * t["charge"] + c.density_weight * t["density"]

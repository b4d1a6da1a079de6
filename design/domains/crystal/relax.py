"""Soft-sphere relaxation of sampled crystals: a cheap, deterministic geometry polish without
network calls (``generate.relax_steps``).

The decoder places atoms one shot, and its geometry is close to real crystals' but not exact: the
valid samples of the default generator have no symmetry beyond P1 even at spglib's symprec 0.5 A
for 85% of them, so coordination environments come out distorted. Each crystal here minimises

    E = sum over site pairs and periodic images of relu(1 - d_ij / (scale * (r_i + r_j)))^2

(``r``: covalent radii, the physics penalty's table) over its fractional coordinates and, at fixed
volume, its cell shape, by ``steps`` Adam steps of size ``lr`` (fractional units for coordinates,
Angstrom for the lattice entries). Atoms that sit closer than ``scale`` times their contact
distance push apart until neighbours are evenly spaced, which regularises coordination polyhedra
the way a repulsive force field does. Species, site count and volume are kept, so composition
and density are unaffected; a crystal that relaxation would bring two sites within 0.5 A keeps its
decoded geometry (the overlap rule's guarantee), and one with no pair inside its contact distances
is left as it is (zero gradient, zero Adam step).
"""

from __future__ import annotations

import torch

from design.domains.crystal.checks import MIN_DISTANCE
from design.domains.crystal.elements import tables
from design.domains.crystal.tensors import (
    IMAGES,
    CrystalTensors,
    cell_volume,
    image_distances,
    self_pair_mask,
)

#: pairs are listed once, from the crystal as sampled, out to this many Angstrom beyond contact;
#: the relaxation moves atoms by tenths of an Angstrom, so no pair enters contact from beyond it
LIST_MARGIN = 0.75


def relax_batch(t: CrystalTensors, scale: float, steps: int, lr: float) -> CrystalTensors:
    """The crystals of ``t`` after the soft-sphere relaxation (see module docstring).

    The pairs (site, site, periodic image) within contact distance plus ``LIST_MARGIN`` are
    listed once from the 27-image distances of the crystals as sampled, each with its integer
    image offset, so that every step computes those pairs alone."""
    if steps <= 0 or len(t) == 0 or not (t.z > 0).any():
        return t
    occupied = t.z > 0
    n_max = int(occupied.any(0).nonzero().max()) + 1  # slots beyond the last occupied one are left out
    frac0 = t.frac[:, :n_max].float()
    lat0 = t.lattice.float()
    z = t.z[:, :n_max]
    occ = occupied[:, :n_max]
    radius = torch.as_tensor(tables().covalent_radius, dtype=torch.float32)[z]
    contact = scale * (radius[:, :, None] + radius[:, None, :])  # [B, S, S]
    with torch.no_grad():
        d0 = image_distances(frac0, lat0)  # [B, S, S, 27]
        listed = (d0 < contact[..., None] + LIST_MARGIN) & (occ[:, :, None] & occ[:, None, :])[..., None]
        listed &= ~self_pair_mask(n_max, z.device)
        listed &= torch.arange(n_max)[:, None, None] <= torch.arange(n_max)[None, :, None]  # each pair once
        b, i, j, k = listed.nonzero(as_tuple=True)
        diff = frac0[b, j] - frac0[b, i]
        offset = IMAGES[k] - torch.round(diff)  # the image as wrapped in image_distances, fixed from now on
    if len(b) == 0:
        return t
    pair_contact = contact[b, i, j]
    weight = torch.where(i == j, 0.5, 1.0)  # a site's image k and its image -k are the same pair
    volume0 = cell_volume(lat0)
    frac = frac0.clone().requires_grad_(True)
    lat = lat0.clone().requires_grad_(True)
    # eps far above float32 noise: forces that cancel by symmetry must not become full steps
    opt = torch.optim.Adam([frac, lat], lr=lr, eps=1e-4)

    def fixed_volume(lattice: torch.Tensor) -> torch.Tensor:
        return lattice * (volume0 / cell_volume(lattice).clamp(min=1e-6)).pow(1.0 / 3.0)[:, None]

    site_i, site_j = b * n_max + i, b * n_max + j  # rows of the flattened [B * S, 3] coordinates
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            flat = frac.view(-1, 3)
            df = flat.index_select(0, site_j) - flat.index_select(0, site_i) + offset  # [P, 3]
            cl = fixed_volume(lat).index_select(0, b)  # [P, 6], lower-triangular rows
            x = df[:, 0] * cl[:, 0] + df[:, 1] * cl[:, 1] + df[:, 2] * cl[:, 3]
            y = df[:, 1] * cl[:, 2] + df[:, 2] * cl[:, 4]
            zc = df[:, 2] * cl[:, 5]
            d = torch.sqrt(x * x + y * y + zc * zc + 1e-12)
            (weight * torch.relu(1.0 - d / pair_contact) ** 2).sum().backward()
            opt.step()
    with torch.no_grad():
        out_frac = t.frac.clone()
        out_frac[:, :n_max] = torch.where(occ[..., None], torch.remainder(frac, 1.0), frac0).to(t.frac.dtype)
        new_lat = fixed_volume(lat)
    return CrystalTensors(t.z, out_frac, new_lat.to(t.lattice.dtype))


def closest_pair(t: CrystalTensors) -> torch.Tensor:
    """[B] shortest distance between two sites (periodic images included; inf for one site alone)."""
    occ = t.z > 0
    d = image_distances(t.frac.float(), t.lattice.float())
    pair = (occ[:, :, None] & occ[:, None, :])[..., None] & ~self_pair_mask(t.z.shape[1], t.z.device)
    return d.masked_fill(~pair, float("inf")).amin(dim=(1, 2, 3))


def relax(t: CrystalTensors, scale: float, steps: int, lr: float, chunk: int = 256) -> CrystalTensors:
    """:func:`relax_batch` over chunks of crystals grouped by site count, results in input order.

    A crystal whose relaxation brings two sites closer than ``MIN_DISTANCE`` (the structural
    check's limit; a step can overshoot, and pairs beyond the list are not seen) keeps its decoded
    geometry, so the overlap rule's guarantee holds: 5 of 10,000 samples of the default generator
    would have lost it."""
    if steps <= 0 or len(t) == 0:
        return t
    by_size = torch.argsort(t.n_sites(), stable=True)
    frac = t.frac.clone()
    lattice = t.lattice.clone()
    for start in range(0, len(t), chunk):
        idx = by_size[start : start + chunk]
        part = t.subset(idx)
        r = relax_batch(part, scale, steps, lr)
        keep = closest_pair(r) >= MIN_DISTANCE
        frac[idx] = torch.where(keep[:, None, None], r.frac, part.frac)
        lattice[idx] = torch.where(keep[:, None], r.lattice, part.lattice)
    return CrystalTensors(t.z, frac, lattice)

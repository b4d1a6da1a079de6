"""Crystal structures as periodic radius graphs for torch-geometric.

Nodes are sites (feature: atomic number); there is a directed edge i -> j for every periodic image
of site j within ``cutoff`` Angstrom of site i (pymatgen's neighbour list, so images across the
cell boundary and several images of the same site are all edges). Edge features: the distance and
the Cartesian vector from the centre site to the neighbour's image (``vec``, Angstrom), from which
the distances of a structure whose atoms are displaced follow differentiably (the adversarial
attacks of :mod:`property_models.adversarial`). A site with no neighbour within the cutoff gets a
self-loop at distance ``cutoff`` (vector ``(cutoff, 0, 0)``, which no displacement changes) so that
no node is isolated. Graph feature ``u``: the Li-environment descriptors of
:mod:`property_models.descriptors` (a surrogate configured with ``descriptors`` reads them).
"""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data

from property_models.descriptors import li_environment

DEFAULT_CUTOFF = 5.0  # Angstrom


def structure_graph(structure: Structure, cutoff: float = DEFAULT_CUTOFF, y: list[float] | None = None,
                    descriptors: bool = True) -> Data:
    """One structure -> ``Data(z [N], edge_index [2, E], dist [E], vec [E, 3], u [1, D], y [1, T])``;
    ``u`` only with ``descriptors`` (a second neighbour search, skipped for models that do not read it)."""
    if not cutoff > 0:
        raise ValueError(f"cutoff={cutoff} A must be > 0")
    if not structure.is_ordered:
        raise ValueError(f"{structure.composition.reduced_formula} has partial occupancies; order it first")
    z = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
    center, neighbor, image, dist = structure.get_neighbor_list(cutoff)
    keep = dist > 1e-8  # a site is not its own neighbour at zero distance
    center, neighbor, image, dist = center[keep], neighbor[keep], image[keep], dist[keep]
    cart = structure.cart_coords
    vec = cart[neighbor] + image @ structure.lattice.matrix - cart[center] if len(center) else np.zeros((0, 3))
    lonely = np.setdiff1d(np.arange(len(structure)), center)
    if len(lonely):
        center = np.concatenate([center, lonely])
        neighbor = np.concatenate([neighbor, lonely])
        dist = np.concatenate([dist, np.full(len(lonely), cutoff)])
        vec = np.concatenate([vec, np.tile([cutoff, 0.0, 0.0], (len(lonely), 1))])
    edge_index = torch.from_numpy(np.stack([neighbor, center]).astype(np.int64))  # source -> target
    data = Data(z=z, edge_index=edge_index, dist=torch.from_numpy(dist.astype(np.float32)),
                vec=torch.from_numpy(vec.astype(np.float32)).reshape(-1, 3), num_nodes=len(z))
    if descriptors:
        data.u = torch.from_numpy(li_environment(structure))[None]
    if y is not None:
        data.y = torch.tensor([y], dtype=torch.float32)
    return data

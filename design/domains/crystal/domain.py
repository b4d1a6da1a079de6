"""The crystal domain: pymatgen ``Structure`` <-> fixed-size tensors, physics, checks, files."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Structure

from design.config import GenerateConfig, ModelConfig, PenaltyConfig
from design.domains.base import Candidate, Domain, DomainNetworks, EncodedDataset
from design.domains.crystal import checks, tensors
from design.domains.crystal.constrain import fit_element_volumes
from design.domains.crystal.elements import N_SPECIES, tables
from design.domains.crystal.nets import CrystalDecoderHead, CrystalDiscBody, CrystalEncoderBody, LatticeScaler
from design.domains.crystal.penalty import CrystalPenalty
from design.domains.crystal.relax import relax
from design.domains.crystal.tensors import CrystalBatch, CrystalTensors, lattice_matrix
from design.utils import atomic_write_text

log = logging.getLogger(__name__)


class CrystalDomain(Domain):
    name = "crystal"

    def __init__(
        self, max_sites: int = 20, penalty: PenaltyConfig | None = None, max_elements_smact: int = 8
    ):
        self.max_sites = max_sites
        self.penalty_cfg = penalty or PenaltyConfig()
        self.max_elements_smact = max_elements_smact
        self._matcher = None

    # -- data
    def load_dataset(
        self, relpath: str, properties: list[str], limit: int | None = None, property_table: str | None = None
    ) -> EncodedDataset:
        from design.data.crystals import load_crystal_dataset

        return load_crystal_dataset(relpath, list(properties), self.max_sites, limit, property_table=property_table)

    def fit_state(self, train: EncodedDataset) -> dict:
        t: CrystalTensors = train.tensors
        n = t.n_sites().float()
        feats = LatticeScaler.raw_features(t.lattice.float(), n)
        allowed = torch.zeros(N_SPECIES, dtype=torch.bool)
        allowed[torch.unique(t.z)] = True
        allowed[0] = True
        distinct = max((len(set(row) - {0}) for row in t.z.tolist()), default=0)
        return {
            "max_distinct_elements": distinct,
            "max_sites": self.max_sites,
            "lattice_mean": feats.mean(0).tolist(),
            "lattice_std": feats.std(0).clamp(min=1e-3).tolist(),
            "allowed_species": allowed.nonzero().squeeze(1).tolist(),
            "element_volumes": fit_element_volumes(t.z, t.lattice, N_SPECIES),
        }

    # -- tensors
    def encode(self, samples: list[Structure]) -> CrystalTensors:
        return tensors.encode(samples, self.max_sites)

    def decode(self, t: CrystalTensors) -> list[Structure]:
        return tensors.decode(t)

    def real_batch(self, t: CrystalTensors) -> CrystalBatch:
        return t.to_batch()

    def interpolate(self, real: CrystalBatch, fake: CrystalBatch, alpha: torch.Tensor) -> CrystalBatch:
        a = alpha.view(-1, 1, 1)
        return CrystalBatch(
            a * real.species + (1 - a) * fake.species,
            a * real.frac + (1 - a) * fake.frac,
            alpha.view(-1, 1) * real.lattice + (1 - alpha.view(-1, 1)) * fake.lattice,
        )

    def batch_to_tensors(self, batch: CrystalBatch) -> CrystalTensors:
        return batch.to_tensors()

    def decoding_rules(self, t: CrystalTensors, settings: GenerateConfig | None = None) -> CrystalTensors:
        """The soft-sphere relaxation of ``relax.py`` when ``generate.relax_steps`` > 0 (the other
        rules act inside the decoder head, on its probabilities)."""
        s = settings or GenerateConfig()
        return relax(t, s.relax_scale, s.relax_steps, s.relax_lr)

    def detach_species(self, batch: CrystalBatch) -> CrystalBatch:
        return CrystalBatch(batch.species.detach(), batch.frac, batch.lattice)

    def detach_cell(self, batch: CrystalBatch) -> CrystalBatch:
        return CrystalBatch(batch.species, batch.frac, batch.lattice.detach())

    def augment(
        self, batch: CrystalBatch, jitter: float, permute: bool, generator: torch.Generator | None = None
    ) -> CrystalBatch:
        """Gaussian Cartesian displacements (``jitter`` Angstrom per axis) of every site and/or a
        random site order; the lattice is kept. A random rotation of the frame has no form here:
        the lower-triangular lattice is the same tensor for every rotation of a cell, so the
        discriminator sees rotations as identical by construction (and, being a graph network
        over distances, site orders too; ``permute`` is then an identity, kept for symmetry)."""
        species, frac = batch.species, batch.frac
        if permute:
            order = torch.argsort(torch.rand(frac.shape[:2], generator=generator, device=frac.device), dim=1)
            species = torch.gather(species, 1, order[..., None].expand_as(species))
            frac = torch.gather(frac, 1, order[..., None].expand_as(frac))
        if jitter > 0:
            noise = torch.randn(frac.shape, generator=generator, device=frac.device) * jitter  # Cartesian
            inv = torch.linalg.inv(lattice_matrix(batch.lattice))  # rows are lattice vectors
            frac = torch.remainder(frac + torch.einsum("bsx,bxy->bsy", noise, inv), 1.0)
        return CrystalBatch(species, frac, batch.lattice)

    # -- physics and checks
    def build_penalty(self) -> CrystalPenalty:
        return CrystalPenalty(self.penalty_cfg, tables().as_torch())

    def check(self, obj: Structure) -> checks.CrystalCheck:
        return checks.check(obj, self.max_elements_smact)

    def check_many(self, objs: list[Structure]) -> list[checks.CrystalCheck]:
        """:meth:`check` of each structure, the structural stage vectorised over all of them."""
        return checks.check_many(objs, self.max_elements_smact)

    def fast_valid(self, t: CrystalTensors) -> torch.Tensor:
        """Structural validity on tensors: occupied-pair distances (27 images) > 0.5 A, volume > 0.1 A^3."""
        occ = (t.z > 0).float()
        d = tensors.image_distances(t.frac.float(), t.lattice.float())
        pair = (occ[:, :, None] * occ[:, None, :])[..., None]
        d = (d + 1e3 * (1 - pair)).masked_fill(tensors.self_pair_mask(t.max_sites, d.device), 1e3)
        ok_dist = d.amin(dim=(1, 2, 3)) > checks.MIN_DISTANCE
        ok_vol = tensors.cell_volume(t.lattice.float()) > checks.MIN_VOLUME
        return ok_dist & ok_vol & (occ.sum(1) > 0)

    def fingerprint(self, obj: Structure) -> str:
        return obj.composition.reduced_formula

    def equivalent(self, a: Structure, b: Structure) -> bool:
        if self._matcher is None:
            from pymatgen.analysis.structure_matcher import StructureMatcher

            self._matcher = StructureMatcher()  # ltol 0.2, stol 0.3, angle_tol 5, as in CDVAE/DiffCSP
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(self._matcher.fit(a, b))

    def contains(self, obj: Structure, part: str) -> bool:
        """Whether the crystal contains the element ``part`` (a symbol such as ``Li``)."""
        return part in {el.symbol for el in obj.composition.elements}

    def monitor_keys(self, t: CrystalTensors) -> list[str]:
        """Sorted element list plus lattice lengths rounded to 0.1 A: a cheap identity for collapse monitors."""
        keys = []
        z = t.z.cpu().tolist()
        lat = tensors.lattice_lengths(t.lattice.float()).cpu()
        for zi, li in zip(z, lat, strict=True):
            elems = ",".join(str(x) for x in sorted(x for x in zi if x > 0))
            keys.append(elems + "|" + ",".join(f"{v:.1f}" for v in sorted(li.tolist())))
        return keys

    # -- networks
    def build_networks(self, model_cfg: ModelConfig, state: dict) -> DomainNetworks:
        if state["max_distinct_elements"] > model_cfg.max_elements:
            raise ValueError(
                f"the training data has crystals with {state['max_distinct_elements']} distinct elements, "
                f"more than model.max_elements={model_cfg.max_elements}; raise model.max_elements"
            )
        allowed = torch.zeros(N_SPECIES, dtype=torch.bool)
        allowed[state["allowed_species"]] = True
        enc_scaler = LatticeScaler(state["lattice_mean"], state["lattice_std"])
        dec_scaler = LatticeScaler(state["lattice_mean"], state["lattice_std"])
        feature_dim = model_cfg.hidden
        volumes = state.get("element_volumes")
        if volumes is None:
            log.warning(
                "this checkpoint predates fitted element volumes: constrained decoding leaves cell volumes "
                "as generated (retrain with `invdes train` to get the volume rule)"
            )
        return DomainNetworks(
            encoder_body=CrystalEncoderBody(model_cfg, enc_scaler),
            decoder_head=CrystalDecoderHead(
                model_cfg, dec_scaler, state["max_sites"], allowed, model_cfg.max_elements, volumes
            ),
            disc_body=CrystalDiscBody(model_cfg, feature_dim),
            feature_dim=feature_dim,
        )

    # -- output
    def describe(self, obj: Structure) -> dict[str, Any]:
        return {
            "formula": obj.composition.reduced_formula,
            "n_sites": len(obj),
            "n_elements": len(obj.composition.elements),
            "density_gcc": round(float(obj.density), 4) if obj.volume > 0 else float("nan"),
            "volume_per_atom": round(obj.volume / max(len(obj), 1), 4),
        }

    def serialize(self, obj: Structure) -> str:
        return obj.to(fmt="cif")

    def deserialize(self, text: str) -> Structure:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")

    def write(self, candidates: list[Candidate], directory: Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for c in candidates:
            path = directory / f"{c.id}.cif"
            atomic_write_text(path, self.serialize(c.obj))
            paths.append(path)
        return paths

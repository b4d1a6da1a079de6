"""Crystal-specific network parts composed by the domain-agnostic VAE-GAN.

* :class:`CrystalEncoderBody`: a transformer over occupied sites (element embedding plus
  sin/cos of fractional coordinates), mean-pooled, joined with lattice features.
* :class:`CrystalDecoderHead`: one shot from the trunk's [B, H] vector to ``S`` site slots
  (learned slot embeddings + self-attention), each with species logits (class 0 = empty) and a
  (cos, sin) pair per fractional coordinate (wrap-aware), plus six lattice numbers.
* :class:`CrystalDiscBody`: a continuous-filter graph network over periodic distances (27
  images), so the discriminator is invariant to site order, origin and rotation by construction;
  it takes species as probabilities so gradients reach the generator's element choices.

Lattice numbers are standardised by :class:`LatticeScaler`: lengths divided by N^(1/3) and logged,
angles in degrees, each shifted and scaled by training-set statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from design.config import ModelConfig
from design.domains.crystal.elements import N_SPECIES
from design.domains.crystal.tensors import (
    CrystalBatch,
    CrystalTensors,
    image_distances,
    self_pair_mask,
)

TWO_PI = 2 * math.pi


class LatticeScaler(nn.Module):
    """Maps lattice parameters [B, 6] (Angstrom, degrees) and atom counts [B] to standardised [B, 6] and back."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    @staticmethod
    def raw_features(lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        scale = n_atoms.clamp(min=1.0).pow(1.0 / 3.0)[:, None]
        return torch.cat([torch.log(lattice[:, :3].clamp(min=1e-3) / scale), lattice[:, 3:]], dim=1)

    def to_std(self, lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        return (self.raw_features(lattice, n_atoms) - self.mean) / self.std

    def from_std(self, x: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        raw = x * self.std + self.mean
        scale = n_atoms.clamp(min=1.0).pow(1.0 / 3.0)[:, None]
        lengths = torch.exp(raw[:, :3].clamp(max=6.0)) * scale
        angles = raw[:, 3:].clamp(20.0, 160.0)
        return torch.cat([lengths, angles], dim=1)


def mlp(sizes: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h [B, S, D], mask [B, S] (float weights) -> [B, D]."""
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-6)


def _coord_features(frac: torch.Tensor) -> torch.Tensor:
    ang = TWO_PI * frac
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class CrystalEncoderBody(nn.Module):
    """Real crystals (hard tensors) -> [B, hidden]."""

    def __init__(self, cfg: ModelConfig, scaler: LatticeScaler):
        super().__init__()
        d = cfg.site_dim
        self.scaler = scaler
        self.embed = nn.Embedding(N_SPECIES, d)
        self.coord = nn.Linear(6, d)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.out = mlp([d + 7, cfg.hidden, cfg.hidden])

    def forward(self, t: CrystalTensors) -> torch.Tensor:
        mask = t.z > 0
        h = self.embed(t.z) + self.coord(_coord_features(t.frac))
        h = self.transformer(h, src_key_padding_mask=~mask)
        m = mask.float()
        n = m.sum(1)
        feats = [masked_mean(h, m), self.scaler.to_std(t.lattice, n), torch.log(n.clamp(min=1))[:, None]]
        return self.out(torch.cat(feats, dim=1))


class CrystalDecoderHead(nn.Module):
    """[B, hidden] -> raw outputs; ``sample`` turns them into a differentiable :class:`CrystalBatch`."""

    def __init__(self, cfg: ModelConfig, scaler: LatticeScaler, max_sites: int, allowed: torch.Tensor):
        super().__init__()
        d = cfg.site_dim
        self.max_sites = max_sites
        self.scaler = scaler
        self.register_buffer("allowed", allowed.bool().clone())  # [V]; class 0 (empty) always allowed
        self.to_slots = nn.Linear(cfg.hidden, max_sites * d)  # each slot reads its own view of h
        self.slot_embed = nn.Parameter(torch.randn(max_sites, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.decoder_layers, enable_nested_tensor=False)
        self.species = nn.Linear(d, N_SPECIES)
        self.coords = nn.Linear(d, 6)
        self.lattice = mlp([cfg.hidden + d, cfg.hidden, 6])

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        slots = self.to_slots(h).view(h.shape[0], self.max_sites, -1) + self.slot_embed[None]
        slots = self.transformer(slots)
        logits = self.species(slots).masked_fill(~self.allowed, float("-inf"))
        coord = self.coords(slots).view(h.shape[0], self.max_sites, 3, 2)
        lat = self.lattice(torch.cat([h, slots.mean(1)], dim=1))
        return {"species_logits": logits, "coord_vec": coord, "lattice_std": lat}

    def sample(
        self,
        raw: dict[str, torch.Tensor],
        tau: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> CrystalBatch:
        """Straight-through Gumbel sample: one-hot species forward, soft gradients backward.

        Every sample gets at least one occupied site (the slot least likely to be empty).
        """
        logits = raw["species_logits"] / temperature
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-10, 1 - 1e-10)
        noisy = logits - torch.log(-torch.log(u))
        soft = torch.softmax(noisy / tau, dim=-1)
        idx = noisy.argmax(-1)  # [B, S]
        empty_rows = (idx == 0).all(1)
        if empty_rows.any():
            probs = torch.softmax(logits[empty_rows], -1)
            slot = (1 - probs[..., 0]).argmax(1)
            rows = empty_rows.nonzero().squeeze(1)
            idx[rows, slot] = logits[rows, slot, 1:].argmax(-1) + 1
        hard = F.one_hot(idx, N_SPECIES).to(soft.dtype)
        species = hard - soft.detach() + soft
        vec = raw["coord_vec"]
        frac = torch.remainder(torch.atan2(vec[..., 1], vec[..., 0]) / TWO_PI, 1.0)
        n = (1 - species[..., 0]).sum(1)
        lattice = self.scaler.from_std(raw["lattice_std"], n)
        return CrystalBatch(species, frac, lattice)

    def reconstruction_loss(self, raw: dict[str, torch.Tensor], t: CrystalTensors) -> dict[str, torch.Tensor]:
        """Per-term means: species cross-entropy over all slots (this learns the site count),
        wrap-aware coordinate loss 1 - cos(2 pi (f_hat - f)) over occupied slots, lattice MSE."""
        mask = t.z > 0
        logits = raw["species_logits"]
        species = F.cross_entropy(logits.reshape(-1, N_SPECIES), t.z.reshape(-1))
        vec = F.normalize(raw["coord_vec"], dim=-1)
        ang = TWO_PI * t.frac
        target = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
        cos_err = 1 - (vec * target).sum(-1)  # [B, S, 3]
        coords = (cos_err * mask[..., None]).sum() / (3 * mask.sum()).clamp(min=1)
        lattice = F.mse_loss(raw["lattice_std"], self.scaler.to_std(t.lattice, mask.sum(1).float()))
        return {"species": species, "coords": coords, "lattice": lattice}


class _RBF(nn.Module):
    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.gamma = 1.0 / (cutoff / (n - 1)) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        env = 0.5 * (torch.cos(math.pi * d.clamp(max=self.cutoff) / self.cutoff) + 1.0)
        return torch.exp(-self.gamma * (d[..., None] - self.centers) ** 2) * env[..., None]


class _Interaction(nn.Module):
    """Continuous-filter convolution: msg_i = sum_j (e_ij W) * v_j, with e_ij [R] radial features.

    Computed as sum_r W_r * (sum_j e_ijr v_j), which never builds the [B, S, S, d] filter tensor.
    """

    def __init__(self, d: int, n_rbf: int):
        super().__init__()
        self.filter = nn.Linear(n_rbf, d, bias=False)
        self.value = nn.Linear(d, d)
        self.update = mlp([2 * d, d, d])

    def forward(self, h: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = self.value(h) * mask[..., None]  # [B, S, d]
        gathered = torch.einsum("bijr,bjd->bird", edges, v)  # [B, S, R, d]
        msg = (gathered * self.filter.weight.t()).sum(2)  # [B, S, d]
        return h + self.update(torch.cat([h, msg], dim=-1))


class CrystalDiscBody(nn.Module):
    """Soft crystal batch -> [B, feature_dim]; invariant to site permutation, origin and rotation."""

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        d = cfg.disc_dim
        self.embed = nn.Linear(N_SPECIES, d, bias=False)
        self.rbf = _RBF(cfg.rbf, cfg.disc_cutoff)
        self.layers = nn.ModuleList(_Interaction(d, cfg.rbf) for _ in range(cfg.disc_layers))
        self.out = mlp([2 * d + 8, feature_dim, feature_dim], act=lambda: nn.LeakyReLU(0.2))

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        p = batch.species
        mask = batch.mask  # [B, S]
        bsz, n_slots = mask.shape
        d = image_distances(batch.frac, batch.lattice)  # [B, S, S, 27]
        # radial features only where they can be non-zero: occupied pairs within the cutoff
        occupied = mask > 0
        near = (d < self.rbf.cutoff) & (occupied[:, :, None] & occupied[:, None, :])[..., None]
        near &= ~self_pair_mask(n_slots, p.device)
        b, i, j, _ = near.nonzero(as_tuple=True)
        edges = torch.zeros(bsz, n_slots, n_slots, self.rbf.centers.numel(), device=p.device, dtype=d.dtype)
        edges = edges.index_put((b, i, j), self.rbf(d[near]), accumulate=True)
        h = self.embed(p)
        for layer in self.layers:
            h = layer(h, edges, mask)
        n = mask.sum(1)
        lat = LatticeScaler.raw_features(batch.lattice, n)
        # shortest distance between occupied sites (empty slots pushed out of reach)
        pair = (mask[:, :, None] * mask[:, None, :])[..., None]
        d_occ = (d + 1e3 * (1 - pair)).masked_fill(self_pair_mask(p.shape[1], p.device), 1e3)
        d_min = d_occ.amin(dim=(1, 2, 3)).clamp(max=5.0)
        glob = torch.cat(
            [lat[:, :3], torch.cos(torch.deg2rad(lat[:, 3:])), torch.log(n.clamp(min=1e-3))[:, None], d_min[:, None]],
            dim=1,
        )
        pooled = torch.cat([masked_mean(h, mask), (h * mask[..., None]).sum(1) / p.shape[1], glob], dim=1)
        return self.out(pooled)
